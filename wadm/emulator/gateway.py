"""The emulator's listening socket: WebSocket upgrades go to picows, REST stays here.

picows answers plain HTTP requests only from its synchronous listener factory,
so a response cannot be delayed (the "slow snapshot" fault) without blocking
the loop. `Gateway` therefore reads the first request head of each TCP
connection itself:

- a WebSocket upgrade, a control request or any non-REST path is handed to a
  picows protocol together with the bytes read so far; from then on picows
  owns the socket exactly as if it had accepted it (no cost per frame);
- a REST request (`RestApi.handles`) is answered here, possibly after a delay,
  and the connection is kept alive for further requests (REST, control, or 404).

NOTE: the hand-off builds picows's ``WSProtocol`` the way ``ws_create_server``
does (same arguments); keep it in step when upgrading picows.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, cast

from picows import WSAutoPingStrategy, WSListener, WSUpgradeRequest, WSUpgradeResponseWithListener

from wadm.emulator.rest import HttpResponse

__all__ = ["Gateway", "HttpHandler", "ws_protocol_factory"]

_MAX_HEAD = 16 * 1024
_FIRST_REQUEST_TIMEOUT = 5.0
_KEEP_ALIVE_TIMEOUT = 30.0

_WSProtocol: Any = importlib.import_module("picows.picows").WSProtocol

ListenerFactory = Callable[[WSUpgradeRequest], "WSListener | WSUpgradeResponseWithListener | None"]
HttpHandler = Callable[[str, bool], "HttpResponse | None"]
"""``(path, first_request)`` -> a response, or None to hand the connection to picows."""


def ws_protocol_factory(listener_factory: ListenerFactory, *, max_frame_size: int) -> Callable[[], Any]:
    """A factory of picows server protocols, as ``ws_create_server`` makes them.

    Args:
        listener_factory: Routes upgrade requests (the emulator's ``_on_request``).
        max_frame_size: Largest accepted frame.
    """
    logger = logging.getLogger("wadm.emulator.ws")

    def make() -> Any:
        return _WSProtocol(
            None,
            None,
            False,
            listener_factory,
            logger,
            True,
            _FIRST_REQUEST_TIMEOUT,
            False,
            20,
            20,
            WSAutoPingStrategy.PING_WHEN_IDLE,
            False,
            max_frame_size,
            None,
            16 * 1024,
        )

    return make


class Gateway(asyncio.Protocol):
    """One accepted TCP connection until it is handed to picows or closed."""

    def __init__(
        self,
        handler: HttpHandler,
        ws_factory: Callable[[], Any],
        registry: set[Gateway],
    ) -> None:
        """Prepare the connection.

        Args:
            handler: Answers plain HTTP requests (None: hand over to picows).
            ws_factory: Makes the picows protocol for a hand-over.
            registry: Open gateway connections (closed when the emulator stops).
        """
        self._handler = handler
        self._ws_factory = ws_factory
        self._registry = registry
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self._first = True
        self._busy = False
        self._timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # NOTE: uvloop's is no subclass
        self._registry.add(self)
        self._arm(_FIRST_REQUEST_TIMEOUT)

    def connection_lost(self, exc: Exception | None) -> None:
        self._registry.discard(self)
        self._cancel_timer()
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._busy:
            self._process()

    def close(self) -> None:
        """Close the connection (pending delayed answers are dropped)."""
        if self._transport is not None:
            self._transport.close()

    # -------------------------------------------------------------- internals

    def _process(self) -> None:
        transport = self._transport
        while transport is not None and not self._busy:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > _MAX_HEAD:
                    self._write(HttpResponse(431, b'{"error":"request head too large"}'), close=True)
                return
            head = self._buffer[: end + 4]
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ")
            headers = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            upgrade = headers.get("upgrade", "").lower() == "websocket"
            path = parts[1] if len(parts) == 3 else "/"
            if self._first and (upgrade or len(parts) != 3):
                self._hand_over()
                return
            if len(parts) != 3 or upgrade:
                self._write(HttpResponse(400, b'{"error":"bad request"}'), close=True)
                return
            length = int(headers.get("content-length", "0") or 0)
            if len(self._buffer) < end + 4 + length:
                return
            response = self._handler(path, self._first) if parts[0] in ("GET", "HEAD") else None
            if response is None:
                if self._first:
                    self._hand_over()
                    return
                response = HttpResponse(405 if parts[0] not in ("GET", "HEAD") else 404, b'{"error":"not found"}')
            self._buffer = self._buffer[end + 4 + length :]
            self._first = False
            close = headers.get("connection", "").lower() == "close" or parts[2] == "HTTP/1.0"
            self._cancel_timer()
            if response.delay > 0:
                self._busy = True
                loop = asyncio.get_running_loop()
                self._timer = loop.call_later(response.delay, self._delayed, response, close)
                return
            self._write(response, close=close)

    def _delayed(self, response: HttpResponse, close: bool) -> None:
        self._timer = None
        self._busy = False
        self._write(response, close=close)
        self._process()

    def _write(self, response: HttpResponse, *, close: bool) -> None:
        transport = self._transport
        if transport is None:
            return
        try:
            phrase = HTTPStatus(response.status).phrase
        except ValueError:
            phrase = "Unknown"
        lines = [f"HTTP/1.1 {response.status} {phrase}"]
        headers = {"Content-Type": "application/json", **response.headers}
        headers["Content-Length"] = str(len(response.body))
        headers["Connection"] = "close" if close else "keep-alive"
        lines += [f"{name}: {value}" for name, value in headers.items()]
        transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + response.body)
        if close:
            transport.close()
        else:
            self._arm(_KEEP_ALIVE_TIMEOUT)

    def _hand_over(self) -> None:
        transport = self._transport
        assert transport is not None
        self._cancel_timer()
        self._registry.discard(self)
        self._transport = None
        data, self._buffer = self._buffer, b""
        proto = self._ws_factory()
        transport.set_protocol(proto)
        proto.connection_made(transport)
        view = memoryview(data)
        while view:
            buf = proto.get_buffer(len(view))
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            view = view[n:]
            proto.buffer_updated(n)

    def _arm(self, seconds: float) -> None:
        self._cancel_timer()
        self._timer = asyncio.get_running_loop().call_later(seconds, self.close)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
