"""Server-side WebSocket connections with the rules every venue shares.

`Connection` is a picows listener that enforces the per-connection limits of a
venue market (`ConnectionPolicy`): the incoming message rate limit (a rolling
one-second window that counts data, ping and pong frames; one message too many
closes with 1008 "Too many requests"), server pings with a pong deadline, a
maximum lifetime, silence windows, a send-buffer cap for slow consumers and
orderly or abrupt closing. Venue subclasses implement `Connection.on_text` for
their control messages.

Data frames are queued with `Connection.queue` and written by `Hub.flush`, one
transport write per connection per publishing round.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import struct
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport

from wadm.emulator.frames import encode_text

if TYPE_CHECKING:
    from wadm.emulator.hub import Channel, Hub

__all__ = ["Connection", "ConnectionPolicy"]

_log = logging.getLogger(__name__)

_CLOSE_TIMEOUT = 1.0
"""Seconds to wait for the client's CLOSE reply before cutting the socket."""

_LINGER_RESET = struct.pack("ii", 1, 0)
"""SO_LINGER value that makes close() send a TCP RST."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ConnectionPolicy:
    """Per-connection limits of one venue market.

    Attributes:
        max_messages_per_s: Incoming frames (data, ping, pong) allowed in any
            rolling one-second window; one more closes the connection with 1008.
        ping_interval: Seconds between server PING frames; 0 disables pings.
        pong_timeout: Seconds a PING may stay unanswered before the server
            disconnects the client.
        max_lifetime: Seconds after which the server closes the connection;
            0 disables.
        idle_timeout: Seconds without a client text message after which the
            server closes the connection (Bybit); 0 disables.
    """

    max_messages_per_s: int
    ping_interval: float
    pong_timeout: float
    max_lifetime: float = 86_400.0
    idle_timeout: float = 0.0


_ids = itertools.count(1)


class Connection(WSListener):
    """A server-side WebSocket connection with the venue-neutral rules."""

    def __init__(
        self,
        hub: Hub,
        *,
        venue: str,
        market: str,
        path: str,
        route: str,
        combined: bool,
        policy: ConnectionPolicy,
    ) -> None:
        """Prepare a connection; it becomes live in `on_ws_connected`.

        Args:
            hub: Registry the connection joins once connected.
            venue: Venue name.
            market: Venue market.
            path: Request path including the query string.
            route: Venue route of the path (USD-M ``public``/``market``), or "".
            combined: Whether data frames use the combined wrapper.
            policy: Limits that apply to this connection.
        """
        super().__init__()
        self.hub = hub
        self.conn_id = next(_ids)
        self.venue = venue
        self.market = market
        self.path = path
        self.route = route
        self.combined = combined
        self.policy = policy
        self.subscriptions: dict[str, Channel] = {}
        """Subscribed stream names in subscription order."""
        self.transport: WSTransport | None = None
        self.closing = False
        """True once a CLOSE was sent or the socket was cut: no more data."""
        self.silenced_until = 0.0
        self.shutdown_notified = False
        self.connected_at = 0.0
        self.frames_received = 0
        self.last_message_at = 0.0
        """``time.monotonic()`` of the last client text message (or of the connect)."""
        self._raw: asyncio.Transport | None = None
        self._pending: list[bytes] = []
        self._recv_times: deque[float] = deque()
        self._pings: dict[bytes, float] = {}
        self._timers: list[asyncio.TimerHandle] = []
        self._ping_handle: asyncio.TimerHandle | None = None
        self._pong_handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._backlog_since: float | None = None
        self._writable = asyncio.Event()
        self._writable.set()

    # ------------------------------------------------------------------ hooks

    def on_connected(self) -> None:
        """Called once the handshake is complete; venues subscribe URL streams."""

    def on_text(self, payload: bytes) -> None:
        """Handle one incoming text (or binary) message.

        Args:
            payload: The message bytes.
        """

    # ------------------------------------------------------ picows callbacks

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self._raw = transport.underlying_transport
        self._loop = loop = asyncio.get_running_loop()
        self.connected_at = self.last_message_at = time.monotonic()
        self.hub.register(self)
        policy = self.policy
        if policy.ping_interval > 0:
            self._ping_handle = loop.call_later(policy.ping_interval, self._send_ping)
        if policy.max_lifetime > 0:
            self.call_later(
                policy.max_lifetime,
                self.close,
                WSCloseCode.GOING_AWAY,
                "Connection lifetime expired",
            )
        if policy.idle_timeout > 0:
            self.call_later(policy.idle_timeout, self._check_idle)
        self.on_connected()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.closing = True
        self._writable.set()
        self._pending.clear()
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        if self._ping_handle is not None:
            self._ping_handle.cancel()
        if self._pong_handle is not None:
            self._pong_handle.cancel()
        self.hub.unregister(self)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        msg_type = frame.msg_type
        if msg_type == WSMsgType.CLOSE:
            self._on_close_frame(frame)
            return
        if self.closing:
            return
        now = time.monotonic()
        self.frames_received += 1
        recv = self._recv_times
        recv.append(now)
        cutoff = now - 1.0
        while recv[0] <= cutoff:
            recv.popleft()
        if len(recv) > self.policy.max_messages_per_s:
            self.close(WSCloseCode.POLICY_VIOLATION, "Too many requests")
            return
        if msg_type == WSMsgType.PING:
            transport.send_pong(frame.get_payload_as_bytes())
        elif msg_type == WSMsgType.PONG:
            self._on_pong(frame.get_payload_as_bytes())
        elif msg_type in (WSMsgType.TEXT, WSMsgType.BINARY):
            self.last_message_at = now
            self.on_text(frame.get_payload_as_bytes())

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    async def wait_writable(self) -> None:
        """Wait until the transport's send buffer is below its high-water mark."""
        await self._writable.wait()

    # ---------------------------------------------------------------- writes

    def queue(self, frames: bytes) -> None:
        """Queue encoded frames; `Hub.flush` writes them."""
        pending = self._pending
        if not pending:
            self.hub.mark_dirty(self)
        pending.append(frames)

    def flush(self) -> None:
        """Write the queued frames with one transport write."""
        pending = self._pending
        if not pending:
            return
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        pending.clear()
        self.write(data)

    def write(self, data: bytes) -> None:
        """Write encoded frames now, dropping the client if it cannot keep up.

        Args:
            data: One or more complete WebSocket frames.
        """
        raw = self._raw
        if raw is None or self.closing:
            return
        if raw.get_write_buffer_size() > self.hub.max_send_buffer:
            self.drop_slow_consumer()
            return
        raw.write(data)

    def write_buffer_size(self) -> int:
        """Bytes queued in the transport and not yet sent."""
        raw = self._raw
        if raw is None or raw.is_closing():
            return 0
        return raw.get_write_buffer_size()

    def backlogged(self, now: float) -> bool:
        """Whether more than the hub's backlog limit is waiting to be sent.

        A connection that stays backlogged for longer than the hub's slow
        consumer timeout is dropped (and then no longer counts as backlogged).

        Args:
            now: Current ``time.monotonic()``.
        """
        if self.write_buffer_size() <= self.hub.backlog_limit:
            self._backlog_since = None
            return False
        if self._backlog_since is None:
            self._backlog_since = now
        elif now - self._backlog_since > self.hub.slow_consumer_timeout:
            self.drop_slow_consumer()
            return False
        return True

    def drop_slow_consumer(self) -> None:
        """Reset the connection of a client that does not read fast enough."""
        _log.warning(
            "Dropping a slow consumer: it did not drain its send buffer.",
            extra={"conn_id": self.conn_id, "path": self.path},
        )
        self.drop(graceful=False)

    def send_text(self, payload: bytes) -> None:
        """Send one text message after any queued frames.

        Args:
            payload: The message.
        """
        self.flush()
        self.write(encode_text(payload))

    # --------------------------------------------------------------- control

    def call_later(self, delay: float, callback: Any, *args: Any) -> None:
        """Schedule a callback that is cancelled when the connection ends."""
        if self._loop is None:
            return
        self._timers.append(self._loop.call_later(delay, callback, *args))

    def silence(self, seconds: float) -> None:
        """Withhold data frames (not pings or replies) for ``seconds``."""
        self.silenced_until = max(self.silenced_until, time.monotonic() + seconds)

    def close(self, code: WSCloseCode = WSCloseCode.OK, reason: str = "") -> None:
        """Send a CLOSE frame and disconnect once the client replies.

        Args:
            code: WebSocket close code.
            reason: Close reason text.
        """
        transport = self.transport
        if transport is None or self.closing:
            return
        self.flush()
        self.closing = True
        transport.send_close(code, reason.encode())
        self.call_later(_CLOSE_TIMEOUT, transport.disconnect, True)

    def drop(self, *, graceful: bool = False) -> None:
        """Cut the connection.

        Args:
            graceful: Send a CLOSE frame (1001) first, as `close` does. When
                False the TCP connection is reset without a close handshake.
        """
        if graceful:
            self.close(WSCloseCode.GOING_AWAY, "Connection dropped")
            return
        transport = self.transport
        raw = self._raw
        if transport is None or raw is None:
            return
        self.closing = True
        self._pending.clear()
        sock = raw.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            except OSError:
                pass
        raw.abort()

    def info(self, now: float) -> dict[str, Any]:
        """Describe the connection for the stats endpoint."""
        return {
            "id": self.conn_id,
            "venue": self.venue,
            "market": self.market,
            "path": self.path,
            "route": self.route,
            "combined": self.combined,
            "streams": list(self.subscriptions),
            "age": round(now - self.connected_at, 3),
            "silenced": self.silenced_until > now,
            "closing": self.closing,
            "frames_received": self.frames_received,
        }

    # ------------------------------------------------------------- internals

    def _on_close_frame(self, frame: WSFrame) -> None:
        transport = self.transport
        if transport is None:
            return
        if not self.closing:
            self.closing = True
            self._pending.clear()
            code = frame.get_close_code()
            if code in (WSCloseCode.NO_INFO, WSCloseCode.ABNORMAL_CLOSURE):
                code = WSCloseCode.OK
            transport.send_close(code)
        transport.disconnect(True)

    def _check_idle(self) -> None:
        if self.closing:
            return
        left = self.last_message_at + self.policy.idle_timeout - time.monotonic()
        if left <= 0.001:
            self.close(WSCloseCode.GOING_AWAY, "Idle timeout")
        else:
            self.call_later(left, self._check_idle)

    def _send_ping(self) -> None:
        transport = self.transport
        loop = self._loop
        if transport is None or loop is None or self.closing:
            return
        now = time.monotonic()
        payload = b"%d" % time.time_ns()
        self._pings[payload] = now
        self.flush()
        transport.send_ping(payload)
        policy = self.policy
        self._ping_handle = loop.call_later(policy.ping_interval, self._send_ping)
        if self._pong_handle is None:
            self._pong_handle = loop.call_later(policy.pong_timeout, self._check_pong)

    def _on_pong(self, payload: bytes) -> None:
        pings = self._pings
        if payload not in pings:
            return  # NOTE: unsolicited pongs do not count as answers.
        for key in list(pings):
            del pings[key]
            if key == payload:
                break

    def _check_pong(self) -> None:
        self._pong_handle = None
        loop = self._loop
        if not self._pings or loop is None or self.closing:
            return
        oldest = next(iter(self._pings.values()))
        overdue = oldest + self.policy.pong_timeout - time.monotonic()
        if overdue <= 0.001:
            self.close(WSCloseCode.POLICY_VIOLATION, "Pong timeout")
        else:
            self._pong_handle = loop.call_later(overdue, self._check_pong)
