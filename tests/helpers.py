"""Helpers shared by every kind of test: waiting on conditions, free ports.

Tests wait for a *condition* (a counter moved, a state changed), never for a fixed time: a
loaded machine makes fixed sleeps flaky, and conditions also fail with a message that says
what never happened.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

__all__ = ["binance_spot_settings", "free_port", "health", "links", "streams", "until"]


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
