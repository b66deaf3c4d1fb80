"""Helpers shared by every kind of test: waiting on conditions, free ports.

Tests wait for a *condition* (a counter moved, a state changed), never for a fixed time: a
loaded machine makes fixed sleeps flaky, and conditions also fail with a message that says
what never happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import inspect
import re
import resource
import selectors
import signal
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import orjson

__all__ = [
    "Answer", "FakeClock", "RawAnswer", "TcpProxy", "binance_spot_settings", "closed_by_peer", "concurrent_gets",
    "free_port", "health", "idle_sockets", "links", "poll", "raw_http", "streams", "until",
]


def free_port() -> int:
    """A TCP port on loopback that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def until(
    predicate: Callable[[], bool] | Callable[[], Awaitable[bool]],
    seconds: float,
    what: str = "the condition",
    *,
    every: float = 0.02,
) -> None:
    """Wait until ``predicate()`` is true (it may be a coroutine function); fail naming ``what``.

    Polling is deliberate: the predicates read counters and states that other tasks (links,
    the writer, the emulator) update, and no event exists for each of them.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return
        if loop.time() >= deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        await asyncio.sleep(every)


# -- a Service in this process ------------------------------------------------------------------

if TYPE_CHECKING:
    from wadm.config import Settings
    from wadm.emulator import Emulator
    from wadm.pipeline.service import Service
    from wadm.transport.ws import WsLink
    from wadm.venues.base import Stream


def health(svc: Service) -> tuple[bool, dict[str, Any]]:
    """(healthy, body) of ``/health`` for a service running in this process."""
    from wadm.api.resources.system import health_body

    report = svc.live.health()
    return report.healthy, health_body(report)


def streams(svc: Service) -> list[Stream]:
    """Every stream of every collector of ``svc``."""
    return [st for c in svc.collectors for st in c.streams.values()]


def links(svc: Service) -> list[WsLink]:
    """Every collector's link."""
    return [c.link for c in svc.collectors]


def binance_spot_settings(emu: Emulator, symbols: tuple[str, ...] = ("BTCUSDT",), **kw: Any) -> Settings:
    """Settings that collect Binance spot ``symbols`` from the emulator, quick to react (tests)."""
    from wadm.config import Settings, StreamTarget
    from wadm.records import Market, Venue

    base: dict[str, Any] = {
        "collectors_start_delay": 0.0,
        "targets": (StreamTarget(venue=Venue.BINANCE, market=Market.SPOT, symbols=symbols),),
        "binance_spot_ws_url": emu.urls["binance"]["spot"],
        "binance_spot_rest_url": emu.rest_urls["binance"]["spot"],
        "channels": ("trades",),
        "stale_after": 3.0,
        "flush_interval": 0.1,
        "reconnect_min_delay": 0.05,
        "reconnect_max_delay": 0.3,
    }
    return Settings(**(base | kw))


# -- injected clocks and a loopback proxy --------------------------------------------------------


class FakeClock:
    """Monotonic seconds that move only when a test says so (inject as ``clock=``)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        """Move the clock ``seconds`` forward; return the new time."""
        self.now += seconds
        return self.now


class TcpProxy:
    """A TCP proxy on loopback in front of a real server, whose new connections a test can break.

    ``mode`` decides what happens to each connection when it is accepted:

    * ``"forward"``: bytes flow both ways until either side closes;
    * ``"refuse"``: the connection is accepted and closed at once (the WebSocket handshake fails);
    * ``"handshake_only"``: the client's bytes are forwarded, the server's only up to the end of
      its HTTP response head (the WebSocket upgrade), then both sides are closed: a connection
      that opens and dies before it delivers anything.

    Open connections keep the mode they were accepted with.
    """

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.mode = "forward"
        self.accepted = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def url(self, ws_url: str) -> str:
        """``ws_url`` (on the target's port) routed through the proxy."""
        return ws_url.replace(f":{self.target[1]}/", f":{self.port}/", 1)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        mode = self.mode
        self._writers.add(writer)
        try:
            if mode == "refuse":
                return
            up_reader, up_writer = await asyncio.open_connection(*self.target)
            self._writers.add(up_writer)
            try:
                up = asyncio.ensure_future(self._pipe(reader, up_writer))
                down = asyncio.ensure_future(self._pipe(up_reader, writer, head_only=mode == "handshake_only"))
                self._tasks.update((up, down))
                await asyncio.wait((up, down), return_when=asyncio.FIRST_COMPLETED)
                for task in (up, down):
                    task.cancel()
                    self._tasks.discard(task)
            finally:
                self._writers.discard(up_writer)
                up_writer.close()
        finally:
            self._writers.discard(writer)
            writer.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, head_only: bool = False) -> None:
        seen = b""
        while data := await reader.read(65536):
            if head_only:
                seen += data
                end = seen.find(b"\r\n\r\n")
                if end >= 0:
                    writer.write(seen[: end + 4])
                    await writer.drain()
                    return
                continue
            writer.write(data)
            await writer.drain()


# -- HTTP clients a hostile or careless client would be -----------------------------------------


@dataclass(frozen=True)
class RawAnswer:
    """What a server wrote back on a raw socket, up to the moment it closed the connection."""

    version: str  # "HTTP/1.1"; "" when nothing (or no status line) came back
    status: int  # 0 when nothing came back
    headers: dict[str, str]  # lower-case names
    body: bytes  # everything after the head
    raw: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


def raw_http(port: int, data: bytes, timeout: float = 15.0, host: str = "127.0.0.1") -> RawAnswer:
    """Send ``data`` as is on a new connection and read until the server closes it (or ``timeout``).

    Send ``Connection: close`` (or HTTP/1.0) for a well-formed request, or this waits for the
    server's keep-alive timeout. A timeout returns what arrived until then.
    """
    out = bytearray()
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.settimeout(timeout)
        with contextlib.suppress(OSError):  # a server may close before taking everything
            s.sendall(data)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            out += chunk
    raw = bytes(out)
    head, sep, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n") if sep else []
    m = re.fullmatch(r"(HTTP/\d(?:\.\d)?) (\d{3})(?: .*)?", lines[0]) if lines else None
    if m is None:
        return RawAnswer("", 0, {}, b"", raw)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return RawAnswer(m[1], int(m[2]), headers, body, raw)


def idle_sockets(
    port: int, count: int, partial: bytes = b"GET /api/v1/tra", host: str = "127.0.0.1"
) -> list[socket.socket]:
    """Open ``count`` connections and leave them idle: the even ones silent, the odd ones after ``partial``.

    The caller closes them. Raise the soft ``RLIMIT_NOFILE`` first (``tests.procs.raise_fd_limit``).
    """
    socks: list[socket.socket] = []
    try:
        for i in range(count):
            s = socket.create_connection((host, port), timeout=10)
            socks.append(s)
            if i % 2 and partial:
                s.sendall(partial)
            s.setblocking(False)
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks


def closed_by_peer(socks: list[socket.socket], seconds: float) -> list[float | None]:
    """Wait up to ``seconds`` for the server to close each socket; seconds until it did, or None.

    A socket counts as closed at end of file or a reset; anything the server writes first (a 408,
    say) is read and ignored.
    """
    started = time.monotonic()
    closed: list[float | None] = [None] * len(socks)
    index = {s.fileno(): i for i, s in enumerate(socks)}
    with selectors.DefaultSelector() as sel:
        for s in socks:
            sel.register(s, selectors.EVENT_READ)
        left = len(socks)
        while left:
            remaining = seconds - (time.monotonic() - started)
            if remaining <= 0:
                break
            for key, _ in sel.select(min(remaining, 1.0)):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if data:
                    continue
                closed[index[sock.fileno()]] = time.monotonic() - started
                sel.unregister(sock)
                left -= 1
    return closed


@dataclass(frozen=True)
class Answer:
    """One answer of :func:`concurrent_gets` or :func:`poll`."""

    path: str
    status: int  # 0: no answer (the error says why)
    seconds: float
    headers: dict[str, str]
    body: bytes
    error: str = ""

    def json(self) -> Any:
        return orjson.loads(self.body)


async def concurrent_gets(base_url: str, paths: list[str], request_timeout: float = 120.0) -> list[Answer]:
    """GET every path at once, each on its own connection; the answers in the order of ``paths``."""
    limits = httpx.Limits(max_connections=len(paths), max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base_url, timeout=request_timeout, limits=limits) as client:

        async def one(path: str) -> Answer:
            t0 = time.perf_counter()
            try:
                r = await client.get(path)
            except httpx.HTTPError as exc:
                return Answer(path, 0, time.perf_counter() - t0, {}, b"", repr(exc))
            return Answer(path, r.status_code, time.perf_counter() - t0, dict(r.headers), r.content)

        return list(await asyncio.gather(*(one(p) for p in paths)))


def poll(url: str, stop: threading.Event, every: float = 0.1, timeout: float = 10.0) -> list[Answer]:
    """GET ``url`` every ``every`` seconds, each time on a new connection, until ``stop`` is set.

    Run it in a thread beside a load; a request that fails or times out is recorded with status 0.
    ``http.client`` keeps the client's own share of each figure small (a new ``httpx`` client
    per request costs milliseconds: it builds an SSL context).
    """
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    out: list[Answer] = []
    while not stop.is_set():
        t0 = time.perf_counter()
        conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout)
        try:
            conn.request("GET", target)
            r = conn.getresponse()
            r.read()
            out.append(Answer(url, r.status, time.perf_counter() - t0, {k.lower(): v for k, v in r.getheaders()}, b""))
        except (OSError, http.client.HTTPException) as exc:
            out.append(Answer(url, 0, time.perf_counter() - t0, {}, b"", repr(exc)))
        finally:
            conn.close()
        stop.wait(every)
    return out


@contextlib.contextmanager
def files_cannot_grow_past(size: int) -> Iterator[None]:
    """Files this process writes cannot grow past ``size`` bytes: a write that would is cut short or
    fails (EFBIG), as on a full disk (ENOSPC). Processes started meanwhile inherit it: start none."""
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
