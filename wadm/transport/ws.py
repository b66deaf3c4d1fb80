"""One venue connection plan kept alive over picows.

Theory of operation
-------------------
A :class:`WsLink` owns one :class:`~wadm.venues.base.ConnectionPlan`. Its ``run()`` loop
connects, then supervises the live connection until one of these happens:

* the socket closes: reconnect after a capped exponential backoff with full jitter;
* a stream of the plan has been silent for ``stale_after`` seconds (a socket can stay open and
  deliver nothing): close it and reconnect, with the same backoff;
* the connection is older than ``rotate_after`` (before the venue's 24 h cut) or the venue sent
  ``serverShutdown``: **make before break** - open a second connection, wait until it delivers
  data, then close the old one. Both feed the same venue protocol meanwhile; it de-duplicates
  trades. Book protocols hold the new connection's frames until the old one is closed and then
  replay them, so a book never interleaves two connections' sequences.

Frames go to the plan's protocol synchronously from picows' callback (no queue, no await on
the receive path). What the protocol returns goes to the link's owner (the collector) at once,
in the same callback: actions such as a snapshot to fetch, and the venue's error replies. A
``serverShutdown`` is the link's own business. Bad frames are counted by kind and logged at a
limited rate; they never stop the link. Server pings are answered by picows; application pings
(Bybit) are sent on a timer.

The watchdog keeps one :class:`StreamWatch` per stream, updated by the link's own loop only;
health and metrics read them and never change them. A stream the owner *excuses* (the venue
refused it, or does not list the symbol) does not make the watchdog replace the connection
until it flows again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import picows

from wadm.errors import VenueProtocolError
from wadm.venues.base import Ack, ConnectionPlan, Event, ServerShutdown, VenueErrorReply

__all__ = ["Backoff", "LinkState", "StreamWatch", "WsLink"]

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 15.0
HANDOVER_TIMEOUT = 15.0  # how long a rotation waits for the new connection's first data
LOG_EVERY = 30.0  # seconds between two log lines about the same kind of bad frame


async def _first_of(events: tuple[asyncio.Event, ...], seconds: float) -> None:
    """Wait until any of ``events`` is set, or ``seconds`` have passed."""
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


class Backoff:
    """Capped exponential backoff with jitter: ``uniform(base / 2, min(cap, base * 2**n))``.

    Full jitter, except for a floor of ``base / 2`` so that a reconnect is never immediate.

    Args:
        base: the first ceiling, seconds.
        cap: the largest ceiling, seconds.
        rng: a random source (injected in tests).
    """

    def __init__(self, base: float, cap: float, rng: random.Random | None = None) -> None:
        self.base = base
        self.cap = cap
        self.attempt = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        """Return the next delay and count the attempt."""
        ceiling = min(self.cap, self.base * (2 ** min(self.attempt, 30)))
        self.attempt += 1
        return self._rng.uniform(self.base / 2, ceiling) if ceiling > self.base / 2 else ceiling

    def reset(self) -> None:
        """Start again from the smallest delay."""
        self.attempt = 0


@dataclass
class LinkState:
    """What health and metrics read about a link."""

    connected: bool = False
    connects: int = 0  # successful connections
    reconnects: int = 0  # connections after the first one, for any reason
    rotations: int = 0  # make-before-break hand-overs
    stale_reconnects: int = 0
    connect_failures: int = 0
    connected_since: float | None = None  # monotonic
    last_error: str | None = None
    errors: Counter[str] = field(default_factory=Counter)  # bad frames and venue errors by kind
    failed: str | None = None  # set when the link stopped for good (collector crashed, no restart)


@dataclass
class StreamWatch:
    """The watchdog's view of one stream; written by the link's loop, read by health."""

    seen: int = 0  # the stream's message count at the last check
    progress_at: float = 0.0  # monotonic time the count last moved (or the connection opened)
    last_message_at: float | None = None  # monotonic time the count last moved
    excuse: str | None = None  # why the stream may stay silent (refused, not listed)
    excused_at: int = 0  # the stream's message count when it was excused

    def excused(self, messages: int) -> bool:
        """True while the stream is excused and has not flowed since."""
        return self.excuse is not None and messages == self.excused_at

    def last_message(self, messages: int, checked_at: float) -> float | None:
        """When the stream last delivered (monotonic), read without moving the marks.

        ``messages`` is the stream's count now; if it moved since the last check (at
        ``checked_at``), the stream delivered after that check.
        """
        if messages != self.seen:
            return max(self.last_message_at or checked_at, checked_at)
        return self.last_message_at


class _Listener(picows.WSListener):
    """picows callbacks for one socket: frames go straight to the venue protocol."""

    def __init__(self, link: WsLink, standby: bool = False) -> None:
        self.link = link
        protocol = link.plan.protocol
        # A connection taking over from another feeds the protocol's standby path until it does
        # (see WsLink._hand_over): some protocols hold those frames, others take them at once.
        self.feed: Callable[[bytes, int], Sequence[Event]] = protocol.feed_standby if standby else protocol.feed
        self.standby = standby
        self.frames = 0
        self.transport: picows.WSTransport | None = None
        self.disconnected = asyncio.Event()
        self.first_data = asyncio.Event()  # the first market-data frame (not an ack or an error)
        self.refused = asyncio.Event()  # a connection taking over had a subscription refused
        self.shutdown_notice = asyncio.Event()
        self.first_data_at: float | None = None  # monotonic
        self.disconnected_at: float | None = None
        self._partial: bytearray | None = None

    def on_ws_connected(self, transport: picows.WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        mt = frame.msg_type
        if mt is picows.WSMsgType.TEXT or mt is picows.WSMsgType.BINARY:
            if not frame.fin:
                self._partial = bytearray(frame.get_payload_as_memoryview())
                return
            payload = frame.get_payload_as_bytes()
        elif mt is picows.WSMsgType.CONTINUATION:
            if self._partial is None:
                return
            self._partial += frame.get_payload_as_memoryview()
            if not frame.fin:
                return
            payload, self._partial = bytes(self._partial), None
        elif mt is picows.WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()
            return
        else:
            return
        self.frames += 1
        if self.first_data_at is None and self.link.plan.is_data(payload):
            self.first_data_at = time.monotonic()
            self.first_data.set()
        try:
            events = self.feed(payload, time.time_ns())
            if events:
                self.link.on_events(self, events)
        except VenueProtocolError as exc:
            self.link.bad_frame(exc.kind, str(exc))
        except Exception as exc:  # a bug on our side: fail the link so its supervisor sees it
            self.link.crash = exc
            self.close()
            self.disconnected.set()

    def on_ws_disconnected(self, transport: picows.WSTransport) -> None:
        self.disconnected_at = time.monotonic()
        self.disconnected.set()

    def close(self) -> None:
        if self.transport is not None and not self.disconnected.is_set():
            self.transport.send_close(picows.WSCloseCode.OK)
            self.transport.disconnect()


class WsLink:
    """Keeps one connection plan connected. See the module docstring.

    Args:
        plan: what to connect to and how to decode it.
        on_events: takes what the protocol returned (actions, venue error replies), in the
            receive callback; it must not block.
        on_connected: called after each new connection has sent its subscriptions.
        stale_after: seconds without data on any one stream before the connection is replaced.
        rotate_after: age in seconds at which the connection is rotated (make before break).
        backoff: reconnect delays.
        clock: monotonic seconds (injected in tests).
        use_aiofastnet: picows transport choice; None means False, the loop's own transport. On
            uvloop, aiofastnet's transport never reports a TCP reset that arrives together with
            data not read yet (uvloop runs the reader once for a socket in error, then stops
            polling it; aiofastnet reads once per call), so a cut connection looked alive until
            the watchdog replaced it.
    """

    def __init__(
        self,
        plan: ConnectionPlan,
        *,
        on_events: Callable[[Sequence[Event]], None],
        on_connected: Callable[[], None] = lambda: None,
        stale_after: float,
        rotate_after: float,
        backoff: Backoff,
        clock: Callable[[], float] = time.monotonic,
        use_aiofastnet: bool | None = None,
    ) -> None:
        self.plan = plan
        self.on_events_cb = on_events
        self.on_connected = on_connected
        self.stale_after = stale_after
        self.rotate_after = min(rotate_after, plan.max_lifetime or rotate_after)
        self.backoff = backoff
        self.clock = clock
        self.use_aiofastnet = bool(use_aiofastnet)
        self.state = LinkState()
        self.current: _Listener | None = None
        self.crash: Exception | None = None  # an unexpected error from frame handling
        self._stopping = asyncio.Event()
        self._last_log: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()
        self.watch = {name: StreamWatch() for name in plan.protocol.streams}
        self.checked_at = 0.0  # monotonic time of the watchdog's last check
        self.silence_allowed = {s.name: max(stale_after, s.min_silence) for s in plan.streams}

    # -- called from the listener -------------------------------------------------------

    def bad_frame(self, kind: str, detail: str) -> None:
        """Count a frame the protocol refused and log it at a limited rate."""
        self.state.errors[kind] += 1
        self._log_limited(kind, "%s: dropped a bad frame (%s): %s", self.plan, kind, detail[:200])

    def on_events(self, listener: _Listener, events: Sequence[Event]) -> None:
        """Act on a shutdown notice; count venue errors; hand the rest to the owner."""
        forward: list[Event] = []
        for event in events:
            if isinstance(event, ServerShutdown):
                listener.shutdown_notice.set()
            elif isinstance(event, Ack):
                continue
            elif isinstance(event, VenueErrorReply) and listener.standby and event.stream is not None:
                # The replacement lacks a stream the current connection carries: it must not take over.
                self.state.errors["venue_error"] += 1
                self.state.last_error = f"rotation: the venue refused {event.stream}: {event.message}"[:300]
                listener.refused.set()
            else:
                if isinstance(event, VenueErrorReply):
                    self.state.errors["venue_error"] += 1
                    self.state.last_error = f"venue error {event.code}: {event.message}"[:300]
                    if event.stream is None or event.stream not in self.watch:
                        self._log_limited("venue_error", "%s: venue answered with an error: %s", self.plan,
                                          event.message[:200])
                        continue
                forward.append(event)
        if forward:
            self.on_events_cb(forward)

    def excuse(self, stream: str, reason: str) -> None:
        """Let ``stream`` stay silent without replacing the connection, until it flows again."""
        watch = self.watch[stream]
        watch.excuse, watch.excused_at = reason[:300], self.plan.protocol.streams[stream].messages

    def pardon(self, stream: str) -> None:
        """Watch ``stream`` again (it trades again): it flows, or the connection is replaced."""
        self.watch[stream].excuse = None

    def last_message(self, stream: str) -> float | None:
        """When ``stream`` last delivered (monotonic seconds; a tick's precision), or None."""
        return self.watch[stream].last_message(self.plan.protocol.streams[stream].messages, self.checked_at)

    def excused(self, stream: str) -> str | None:
        """Why ``stream`` may stay silent, or None (also once it has flowed again)."""
        watch = self.watch[stream]
        return watch.excuse if watch.excused(self.plan.protocol.streams[stream].messages) else None

    def fail(self, reason: str) -> None:
        """The link stopped for good (its supervisor will not restart it)."""
        self.state.failed = reason[:300]
        self.state.connected = False

    def send(self, frames: tuple[bytes, ...]) -> bool:
        """Send frames on the current connection; False when there is none."""
        listener = self.current
        if listener is None or listener.transport is None or listener.disconnected.is_set():
            return False
        for frame in frames:
            listener.transport.send(picows.WSMsgType.TEXT, frame)
        return True

    def _log_limited(self, kind: str, msg: str, *args: object) -> None:
        now = self.clock()
        if now - self._last_log.get(kind, -LOG_EVERY) >= LOG_EVERY:
            self._last_log[kind] = now
            suppressed = self._suppressed.pop(kind, 0)
            extra = {"link": str(self.plan), "kind": kind, "suppressed": suppressed}
            log.warning(msg + (" (%d similar suppressed)" if suppressed else ""), *args, *(
                [suppressed] if suppressed else []), extra=extra)
        else:
            self._suppressed[kind] += 1

    # -- lifecycle -----------------------------------------------------------------------

    def stop(self) -> None:
        """Ask ``run()`` to close the connection and return."""
        self._stopping.set()

    async def run(self) -> None:
        """Connect and stay connected until :meth:`stop`.

        Network failures and bad frames never escape. An unexpected error while handling a frame
        (a bug) closes the connection and is raised from here for the supervisor to handle.
        """
        self.crash = None
        self.state.failed = None
        try:
            while not self._stopping.is_set():
                listener = self.current
                if listener is None:
                    listener = await self._connect_with_retry()
                    if listener is None:
                        return
                    self.current = listener
                    self.on_connected()
                reason = await self._supervise(listener)
                if self.crash is not None:
                    raise RuntimeError(f"{self.plan}: frame handling failed: {self.crash!r}") from self.crash
                if reason == "stop":
                    return
                if reason in ("rotate", "shutdown"):
                    await self._hand_over(listener, reason)
                    continue
                # disconnected or stale: break, then make.
                listener.close()
                self.current = None
                self._mark_disconnected()
                lost_at = time.time_ns()
                for st in self.plan.protocol.streams.values():
                    st.connection_lost(lost_at)  # books resync; trade windows are recorded on the next trade
                if reason == "stale":
                    self.state.stale_reconnects += 1
                    log.warning("%s: a stream went silent for %.0f s; reconnecting", self.plan, self.stale_after,
                                extra={"link": str(self.plan)})
                else:
                    log.warning("%s: connection lost; reconnecting", self.plan, extra={"link": str(self.plan)})
                if await self._sleep(self.backoff.next()):
                    return
        finally:
            if self.current is not None:
                self.current.close()
                self.current = None
                lost_at = time.time_ns()
                for st in self.plan.protocol.streams.values():
                    st.connection_lost(lost_at)
            self._mark_disconnected()

    def _mark_disconnected(self) -> None:
        self.state.connected = False
        self.state.connected_since = None

    async def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopped first; True when stopped."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
        return self._stopping.is_set()

    async def _connect_with_retry(self) -> _Listener | None:
        while not self._stopping.is_set():
            try:
                return await self._connect()
            except (OSError, TimeoutError, picows.WSError, ValueError) as exc:
                self.state.connect_failures += 1
                self.state.last_error = f"connect failed: {type(exc).__name__}: {exc}"[:300]
                delay = self.backoff.next()
                self._log_limited("connect", "%s: could not connect (%s); retrying in %.1f s", self.plan,
                                  self.state.last_error, delay)
                if await self._sleep(delay):
                    return None
        return None

    async def _connect(self, *, standby: bool = False) -> _Listener:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            _, listener = await picows.ws_connect(
                lambda: _Listener(self, standby),
                self.plan.url,
                websocket_handshake_timeout=CONNECT_TIMEOUT,
                enable_auto_pong=True,
                max_frame_size=16 * 1024 * 1024,
                use_aiofastnet=self.use_aiofastnet,
            )
        if not isinstance(listener, _Listener):  # closed before the handshake was answered
            raise ConnectionError(f"{self.plan}: the server closed the connection during the handshake")
        for frame in self.plan.subscribe_frames:
            assert listener.transport is not None
            listener.transport.send(picows.WSMsgType.TEXT, frame)
        st = self.state
        if st.connects:
            st.reconnects += 1
        st.connects += 1
        st.connected = True
        st.connected_since = self.clock()
        now = self.clock()
        for watch in self.watch.values():  # the watchdog counts silence from the new connection
            watch.progress_at = max(watch.progress_at, now)
        return listener

    def _promote(self, listener: _Listener) -> None:
        """The new connection is the only one now: replay the frames it held, then feed directly."""
        if not listener.standby:
            return
        protocol = self.plan.protocol
        listener.standby = False
        listener.feed = protocol.feed
        events = protocol.promote()
        if events:
            self.on_events(listener, events)

    def _check_progress(self) -> str | None:
        """Update per-stream progress; return the name of a stream silent past what it is allowed."""
        now = self.checked_at = self.clock()
        silent = None
        for name, st in self.plan.protocol.streams.items():
            watch = self.watch[name]
            messages = st.messages
            if messages != watch.seen:
                watch.seen = messages
                watch.progress_at = watch.last_message_at = now
            elif watch.excused(messages):
                continue
            elif now - watch.progress_at >= self.silence_allowed.get(name, self.stale_after):
                silent = name
        return silent

    async def _supervise(self, listener: _Listener) -> str:
        """Wait until the connection must be replaced; return why."""
        tick = min(1.0, self.stale_after / 4)
        ping_due = self.clock() + self.plan.app_ping_interval
        while True:
            if self._stopping.is_set():
                return "stop"
            if listener.disconnected.is_set():
                return "disconnected"
            if listener.shutdown_notice.is_set():
                return "shutdown"
            now = self.clock()
            if listener.frames and self.state.connected_since is not None and now - self.state.connected_since > 60:
                self.backoff.reset()  # stayed up and delivered: the next failure starts small
            if self._check_progress() is not None:
                return "stale"
            if self.state.connected_since is not None and now - self.state.connected_since >= self.rotate_after:
                return "rotate"
            if self.plan.app_ping is not None and now >= ping_due and listener.transport is not None:
                listener.transport.send(picows.WSMsgType.TEXT, self.plan.app_ping)
                ping_due = now + self.plan.app_ping_interval
            await _first_of((listener.disconnected, listener.shutdown_notice, self._stopping), tick)

    async def _hand_over(self, old: _Listener, reason: str) -> None:
        """Make before break: a new connection delivers data before the old one closes.

        If the new connection cannot be opened, the old one stays in service and the hand-over
        is tried again after a backoff delay (the old one may still deliver until the venue cuts it).
        """
        log.info("%s: rotating the connection (%s)", self.plan, reason, extra={"link": str(self.plan)})
        try:
            new = await self._connect(standby=True)
        except (OSError, TimeoutError, picows.WSError, ValueError) as exc:
            self.state.connect_failures += 1
            self.state.last_error = f"rotation connect failed: {type(exc).__name__}: {exc}"[:300]
            delay = self.backoff.next()
            self._log_limited("connect", "%s: could not open the replacement connection (%s); the current one "
                              "stays, retrying in %.1f s", self.plan, self.state.last_error, delay)
            await self._sleep(delay)
            return
        promoted = False
        try:
            await _first_of((new.first_data, new.disconnected, new.refused, self._stopping), HANDOVER_TIMEOUT)
            if self._stopping.is_set():
                return
            if new.refused.is_set():
                self.state.connect_failures += 1
                delay = self.backoff.next()
                self._log_limited("connect", "%s: the venue refused a subscription on the replacement connection; "
                                  "the current one stays, retrying in %.1f s", self.plan, delay)
                await self._sleep(delay)
                return
            if new.first_data_at is None or new.disconnected.is_set():
                # The replacement died or stayed silent: keep the current connection (run() replaces
                # it the usual way if it has died too) and try again later.
                self.state.connect_failures += 1
                self.state.last_error = "rotation: the replacement connection delivered no data"
                delay = self.backoff.next()
                self._log_limited("connect", "%s: the replacement connection delivered no data; the current one "
                                  "stays, retrying in %.1f s", self.plan, delay)
                await self._sleep(delay)
                return
            lost, first = old.disconnected_at, new.first_data_at
            if lost is not None and lost < first:
                # The old connection died before the new one delivered: data in between may be lost.
                lost_at = time.time_ns()
                for st in self.plan.protocol.streams.values():
                    st.connection_lost(lost_at)
            old.close()
            self._promote(new)
            promoted = True
            self.state.rotations += 1
            self.state.connected = True
            self.current = new
            self.on_connected()
        finally:
            if not promoted:
                new.close()
                self.plan.protocol.discard_standby()
