"""A TCP reset is noticed at once on uvloop, the loop ``wadm run`` uses, even right behind data.

The server is a plain socket driven synchronously, so one data frame and the reset are both in
the link's kernel buffers before its loop polls again (a venue that cuts a busy connection).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
import socket
import struct
import time

import uvloop

from tests.helpers import until
from wadm.records import Market
from wadm.transport.ws import Backoff, WsLink
from wadm.venues import binance

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


async def _accept_ws(loop: asyncio.AbstractEventLoop, lsock: socket.socket) -> socket.socket:
    sock, _ = await loop.sock_accept(lsock)
    head = b""
    while b"\r\n\r\n" not in head:
        head += await loop.sock_recv(sock, 4096)
    key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
               if line.lower().startswith(b"sec-websocket-key:"))
    accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
    await loop.sock_sendall(sock, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                  b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
    return sock


async def _scenario() -> float:
    loop = asyncio.get_running_loop()
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen()
    lsock.setblocking(False)
    url = f"ws://127.0.0.1:{lsock.getsockname()[1]}"
    plan = binance.plan_trade_connections(Market.SPOT, ("BTCUSDT",), url)[0]
    link = WsLink(plan, on_events=lambda events: None, stale_after=60, rotate_after=1e9,
                  backoff=Backoff(0.05, 0.1, random.Random(1)))
    task = loop.create_task(link.run())
    try:
        first = await asyncio.wait_for(_accept_ws(loop, lsock), 10)
        await until(lambda: link.state.connected, 10, "the link to connect")
        await asyncio.sleep(0.2)  # the link has read its handshake and sits in its poll
        first.setblocking(True)
        first.sendall(b"\x81\x16" + b'{"result":null,"id":1}')  # a frame the link has not read yet ...
        first.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        cut = time.monotonic()
        first.close()  # ... and the reset right behind it
        second = await asyncio.wait_for(_accept_ws(loop, lsock), 5)  # the link noticed and reconnected
        second.close()
        return time.monotonic() - cut
    finally:
        link.stop()
        await asyncio.wait_for(task, 10)
        lsock.close()


def test_a_reset_behind_unread_data_is_noticed_on_uvloop() -> None:
    for _ in range(3):
        assert uvloop.run(_scenario()) < 2  # far below stale_after: the loss, not the watchdog
