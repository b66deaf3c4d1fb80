"""Replay of recorded Binance combined-stream sessions to subscribers.

Recording format: gzip, one message per line, ``<local receive time ns> <frame>``,
where the frame is a combined-stream wrapper ``{"stream":..,"data":..}``. Bare
REST snapshots (``{"lastUpdateId":..}``) recorded inline are skipped.

Timing: line ``i`` is sent at ``start + (recv_i - recv_0) / speed``; with speed 0
or infinity lines go out as fast as the sockets take them. Timestamps are
rebased so the first frame is "now": for a finite speed every ms time field
becomes ``now0 + (t - E0) / speed`` (so event times track the wall clock of
delivery); as fast as possible they are shifted by ``now0 - E0``.

Looping: every pass shifts the id fields of each stream by the id span the
stream covered in the first pass, so ids keep increasing without duplicates.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from wadm.emulator.binance import trade_id_field
from wadm.emulator.frames import encode_text
from wadm.emulator.hub import Hub

__all__ = ["ReplayHandle", "ReplaySpec", "infer_market", "read_recording"]

_log = logging.getLogger(__name__)

_ID_KEYS = ("t", "a", "f", "l", "U", "u", "pu")
_TIME_KEYS = ("E", "T")
_KLINE_TIME_KEYS = ("t", "T")
_FAST_CHUNK = 512
"""Lines sent between two yields to the event loop when replaying at full speed."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ReplaySpec:
    """Configuration of one replayed recording.

    Attributes:
        path: Recording file (gzip, ``<ns> <frame>`` per line).
        market: Venue market the frames belong to (``spot`` or ``usdm``).
        speed: 1.0 replays in real time; 0 or ``inf`` as fast as possible.
        loop: Start over at the end, shifting ids so they keep increasing.
        wait_for_subscriber: Hold the first frame until some connection of the
            market receives a stream (one its route delivers).
        venue: Venue name.
    """

    path: Path
    market: str
    speed: float = 1.0
    loop: bool = False
    wait_for_subscriber: bool = False
    venue: str = "binance"

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))


def infer_market(path: Path) -> str | None:
    """Guess the market from a recording's file name (``spot``/``usdm``)."""
    name = path.name.lower()
    for market in ("usdm", "spot"):
        if market in name:
            return market
    return None


def read_recording(path: Path) -> Iterator[tuple[int, bytes]]:
    """Yield ``(receive_ns, frame)`` for every line of a recording.

    Args:
        path: Gzip recording.

    Yields:
        The receive time and the raw frame bytes (without the newline).
    """
    with gzip.open(path, "rb") as fh:
        for line in fh:
            ts, _, frame = line.rstrip(b"\r\n").partition(b" ")
            if not frame:
                continue
            try:
                yield int(ts), frame
            except ValueError:
                continue


class ReplayHandle:
    """A running replay; await `wait` for its end (never, when looping)."""

    def __init__(self, spec: ReplaySpec, hub: Hub) -> None:
        """Prepare a replay; `start` runs it.

        Args:
            spec: What to replay.
            hub: Channel registry the frames are published to.
        """
        self.spec = spec
        self.hub = hub
        self.frames_read = 0
        """Stream frames read (all passes), whether or not anybody received them."""
        self.passes = 0
        """Completed passes over the file."""
        self._task: asyncio.Task[None] | None = None
        self._spans: dict[str, int] = {}
        self._id_ranges: dict[str, list[int]] = {}

    @property
    def done(self) -> bool:
        """True once the replay finished or was stopped."""
        return self._task is not None and self._task.done()

    def start(self) -> None:
        """Start replaying on the running event loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def wait(self) -> None:
        """Wait until the replay ends."""
        if self._task is not None:
            await asyncio.shield(self._task)

    async def stop(self) -> None:
        """Stop the replay."""
        task = self._task
        if task is None or task.done():
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            if not task.cancelled():
                raise

    async def _run(self) -> None:
        spec = self.spec
        if spec.wait_for_subscriber:
            await self.hub.wait_subscribed(spec.venue, spec.market)
        try:
            while True:
                await self._one_pass(self.passes)
                self.passes += 1
                if not spec.loop:
                    return
                if self.passes == 1:
                    self._spans = {s: r[1] - r[0] + 1 for s, r in self._id_ranges.items()}
        except OSError as exc:
            _log.error(
                "Replay stopped: the recording could not be read.",
                extra={"path": str(spec.path), "error": str(exc)},
            )

    async def _one_pass(self, index: int) -> None:
        spec = self.spec
        loop = asyncio.get_running_loop()
        fast = spec.speed <= 0 or math.isinf(spec.speed)
        start = loop.time()
        now0_ms = time.time_ns() // 1_000_000
        recv0: int | None = None
        e0: int | None = None
        lines = 0
        for recv_ns, frame in read_recording(spec.path):
            if frame.startswith(b'{"lastUpdateId"'):
                continue
            if recv0 is None:
                recv0 = recv_ns
            if fast:
                lines += 1
                if lines % _FAST_CHUNK == 0:
                    self.hub.flush()
                    await self._drain()
            else:
                delay = start + (recv_ns - recv0) / 1e9 / spec.speed - loop.time()
                if delay > 0.0005:
                    self.hub.flush()
                    await asyncio.sleep(delay)
            try:
                msg = orjson.loads(frame)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(msg, dict):
                continue
            stream = msg.get("stream")
            data = msg.get("data")
            if not isinstance(stream, str) or not isinstance(data, dict):
                continue
            if e0 is None:
                e = data.get("E")
                if isinstance(e, int):
                    e0 = e
            self._publish(stream, data, index, now0_ms, e0, None if fast else spec.speed)
        self.hub.flush()

    async def _drain(self) -> None:
        await asyncio.sleep(0)
        for conn in self.hub.select(venue=self.spec.venue, market=self.spec.market):
            try:
                await asyncio.wait_for(conn.wait_writable(), self.hub.slow_consumer_timeout)
            except TimeoutError:
                conn.drop_slow_consumer()

    def _publish(
        self,
        stream: str,
        data: dict[str, Any],
        index: int,
        now0_ms: int,
        e0: int | None,
        speed: float | None,
    ) -> None:
        self.frames_read += 1
        if e0 is not None:
            _rebase(data, now0_ms, e0, speed)
        shift = self._spans.get(stream, 0) * index
        lo_hi = self._id_ranges.get(stream)
        for key in _ID_KEYS:
            value = data.get(key)
            if isinstance(value, int):
                if index == 0:
                    if lo_hi is None:
                        lo_hi = self._id_ranges[stream] = [value, value]
                    elif value < lo_hi[0]:
                        lo_hi[0] = value
                    elif value > lo_hi[1]:
                        lo_hi[1] = value
                elif shift:
                    data[key] = value + shift
        spec = self.spec
        ch = self.hub.channel(spec.venue, spec.market, stream)
        combined, raw = ch.targets(time.monotonic())
        payload = orjson.dumps(data)
        comb_frame = encode_text(b'{"stream":"' + stream.encode() + b'","data":' + payload + b"}") if combined else b""
        raw_frame = encode_text(payload) if raw else b""
        id_key = trade_id_field(stream)
        trade_id = data.get(id_key) if id_key is not None else None
        if isinstance(trade_id, int):
            ch.deliver(combined, comb_frame, raw, raw_frame, 1, trade_id, trade_id)
        else:
            ch.deliver(combined, comb_frame, raw, raw_frame, 1)


def _rebase(data: dict[str, Any], now0_ms: int, e0: int, speed: float | None) -> None:
    for key in _TIME_KEYS:
        value = data.get(key)
        if isinstance(value, int):
            data[key] = _shift(value, now0_ms, e0, speed)
    kline = data.get("k")
    if isinstance(kline, dict):
        for key in _KLINE_TIME_KEYS:
            value = kline.get(key)
            if isinstance(value, int):
                kline[key] = _shift(value, now0_ms, e0, speed)


def _shift(value: int, now0_ms: int, e0: int, speed: float | None) -> int:
    if speed is None:
        return value - e0 + now0_ms
    return now0_ms + round((value - e0) / speed)
