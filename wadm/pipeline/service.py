"""Wires collectors, writer and retention together; start, stop, health.

One :class:`Service` per process. Collectors are :class:`~wadm.transport.ws.WsLink` tasks, one
per connection plan, each supervised: a link that fails unexpectedly is restarted with backoff
(``COLLECTORS_RESTART_ON_ERROR``) or left down and reported. The writer and the retention
sweeper are supervised the same way and always restarted: a dead writer behind a live receive
path is how peers lost data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from wadm.config import Settings
from wadm.errors import StoreError
from wadm.records import GAPS, TRADES, Market, Venue
from wadm.store.base import Store
from wadm.transport.ws import Backoff, WsLink
from wadm.venues import binance, bybit
from wadm.venues.base import ConnectionPlan, TradeStream

__all__ = ["Service", "build_plans"]

log = logging.getLogger(__name__)

SWEEP_EVERY = 60.0
STOP_DEADLINE = 25.0


def build_plans(settings: Settings) -> list[ConnectionPlan]:
    """Plan every connection the settings ask for."""
    plans: list[ConnectionPlan] = []
    urls = {Market.SPOT: settings.binance_spot_ws_url, Market.USDM: settings.binance_usdm_ws_url}
    for target in settings.targets:
        if target.venue is Venue.BINANCE:
            plans += binance.plan_trade_connections(
                target.market,
                target.symbols,
                urls[target.market],
                trade_stream=settings.binance_trade_stream,
                max_rows=settings.buffer_max_rows,
            )
        else:
            plans += bybit.plan_trade_connections(
                target.market, target.symbols, settings.bybit_ws_url, max_rows=settings.buffer_max_rows
            )
    return plans


class Service:
    """The collectors, writer and sweeper of one process.

    Args:
        settings: validated settings.
        store: an unopened store; the service opens and closes it.
        use_aiofastnet: picows transport choice for the links (None: picows' default).
        plans: connection plans to use instead of those the settings describe (tests, benchmarks).
    """

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        use_aiofastnet: bool | None = None,
        plans: list[ConnectionPlan] | None = None,
    ) -> None:
        from wadm.pipeline.writer import Writer  # local: keeps import order simple for the API module

        self.settings = settings
        self.store = store
        plans = build_plans(settings) if plans is None else plans
        if not settings.collectors_enabled:
            plans = []
        # What the API answers for: everything configured (collected now or stored earlier).
        self.collected = list(settings.targets)
        self.links = [
            WsLink(
                plan,
                stale_after=settings.stale_after,
                rotate_after=settings.rotate_after,
                backoff=Backoff(settings.reconnect_min_delay, settings.reconnect_max_delay),
                use_aiofastnet=use_aiofastnet,
            )
            for plan in plans
        ]
        self.streams: list[tuple[WsLink, TradeStream]] = [
            (link, st) for link in self.links for st in link.plan.protocol.streams.values()
        ]
        self.on_batch: list[Callable[[Any, int, float], None]] = []
        self.writer = Writer(
            store,
            [st for _, st in self.streams],
            flush_rows=settings.flush_rows,
            flush_interval=settings.flush_interval,
            max_pending_rows=settings.writer_max_pending_rows,
            on_batch=self._on_batch,
        )
        self.started_at = time.time()
        self.collectors_started = False
        self.restarts: dict[str, int] = {}
        self.store_open = False
        self._tasks: list[asyncio.Task[None]] = []
        self._link_tasks: list[asyncio.Task[None]] = []
        self._drain_task: asyncio.Task[None] | None = None

    def _on_batch(self, key: Any, rows: int, seconds: float) -> None:
        for callback in self.on_batch:
            callback(key, rows, seconds)

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store and start the writer, sweeper and (after the start delay) collectors."""
        try:
            await self.store.open()
            self.store_open = True
        except StoreError as exc:
            log.error("The store is not available (%s); data is kept in memory and retried", exc)
            self._spawn("store-open", self._open_store_later, restart=False)
        self._spawn("writer-cut", self.writer.run_cutter, restart=True)
        self._drain_task = self._spawn("writer-drain", self.writer.run_drain, restart=True)
        self._spawn("retention", self._sweep_forever, restart=True)
        if self.links:
            self._spawn("collectors", self._start_collectors, restart=False)

    async def _open_store_later(self) -> None:
        while not self.store_open:
            await asyncio.sleep(5)
            try:
                await self.store.open()
                self.store_open = True
                log.warning("The store is available again")
            except StoreError as exc:
                log.debug("store still unavailable: %s", exc)

    async def _start_collectors(self) -> None:
        await asyncio.sleep(self.settings.collectors_start_delay)
        for link in self.links:
            self._link_tasks.append(
                self._spawn(str(link.plan), link.run, restart=self.settings.collectors_restart_on_error, link=link)
            )
        self.collectors_started = True
        log.info("Started %d collector connections for %d streams", len(self.links), len(self.streams))

    def _spawn(
        self, name: str, fn: Callable[[], Awaitable[None]], *, restart: bool, link: WsLink | None = None
    ) -> asyncio.Task[None]:
        task = asyncio.create_task(self._supervise(name, fn, restart, link), name=f"wadm:{name}")
        self._tasks.append(task)
        return task

    async def _supervise(
        self, name: str, fn: Callable[[], Awaitable[None]], restart: bool, link: WsLink | None
    ) -> None:
        backoff = Backoff(1.0, 60.0)
        while True:
            try:
                await fn()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.restarts[name] = self.restarts.get(name, 0) + 1
                if not restart:
                    log.error("%s failed and stays down (restart disabled): %r", name, exc, exc_info=exc)
                    if link is not None:
                        link.state.failed = f"{type(exc).__name__}: {exc}"[:300]
                        link.state.connected = False
                    return
                delay = backoff.next()
                log.error("%s failed unexpectedly: %r; restarting in %.1f s", name, exc, delay, exc_info=exc)
                await asyncio.sleep(delay)

    async def _sweep_forever(self) -> None:
        retention = {TRADES: self.settings.retention_raw_trades, GAPS: self.settings.retention_gaps}
        while True:
            await asyncio.sleep(min(SWEEP_EVERY, self.settings.retention_raw_trades / 10))
            if not self.store_open:
                continue
            for table, seconds in retention.items():
                try:
                    deleted = await self.store.sweep(table, time.time_ns() - seconds * 1_000_000_000)
                except StoreError as exc:
                    log.warning("Retention sweep of %s failed (%s); will retry", table, exc)
                    continue
                if deleted:
                    log.debug("retention removed %d %s batches", deleted, table)

    async def stop(self, deadline: float = STOP_DEADLINE) -> None:
        """Close the connections, write everything buffered, close the store."""
        for link in self.links:
            link.stop()
        if self._link_tasks:
            await asyncio.wait(self._link_tasks, timeout=5)
        self.writer.close()
        if self._drain_task is not None:
            done, _ = await asyncio.wait([self._drain_task], timeout=deadline)
            if not done:
                log.error("Shutting down with %d trades not written: the store did not accept them in time",
                          self.writer.pending_rows, extra={"rows": self.writer.pending_rows, "reason": "shutdown"})
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.store.close()
        log.info("Stopped; %d batches (%d trades) written in all", self.writer.stats.batches, self.writer.stats.rows)

    # -- health ------------------------------------------------------------------------

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Return (healthy, body) for ``/health``: every configured stream live and fresh, store writing."""
        now = time.monotonic()
        streams = []
        for link in self.links:
            link.check_progress()
        for link, st in self.streams:
            state = self._stream_state(link, st, now)
            last = link.last_message_at.get(st.spec.name)
            streams.append(
                {
                    "exchange": str(st.venue),
                    "market": str(st.market),
                    "symbol": st.spec.symbol,
                    "stream": st.spec.name,
                    "channel": st.spec.channel,
                    "state": state,
                    "connected": link.state.connected,
                    "last_message_age_s": None if last is None else round(now - last, 3),
                    "messages": st.messages,
                    "trades": st.trades + st.pending,
                    "duplicates": st.duplicates,
                    "missing_trades": st.missing_ids,
                    "dropped": st.dropped,
                    "reconnects": link.state.reconnects,
                    "error": link.failed_streams.get(st.spec.name),
                }
            )
        wst = self.writer.stats
        store = {
            "name": self.store.name,
            "ok": self.store_open and wst.store_ok,
            "pending_rows": self.writer.pending_rows,
            "pending_batches": self.writer.pending_batches,
            "written_rows": wst.rows,
            "dropped_rows": sum(wst.dropped_rows.values()),
            "last_write_age_s": None if wst.last_write is None else round(time.time() - wst.last_write, 3),
            "last_error": wst.last_error,
        }
        connections = [
            {
                "name": str(link.plan),
                "url": link.plan.url,
                "connected": link.state.connected,
                "connects": link.state.connects,
                "reconnects": link.state.reconnects,
                "rotations": link.state.rotations,
                "stale_reconnects": link.state.stale_reconnects,
                "connect_failures": link.state.connect_failures,
                "age_s": None if link.state.connected_since is None else round(now - link.state.connected_since, 3),
                "errors": dict(link.state.errors),
                "last_error": link.state.last_error,
                "failed": link.state.failed,
            }
            for link in self.links
        ]
        live = all(s["state"] == "live" for s in streams)
        healthy = live and bool(store["ok"])
        if not self.settings.collectors_enabled:
            status = "ok" if store["ok"] else "degraded"
        elif not self.collectors_started:
            status = "starting"
        else:
            status = "ok" if healthy else "degraded"
        body: dict[str, Any] = {
            "status": status,
            "time": int(time.time() * 1000),
            "uptime_s": round(time.time() - self.started_at, 3),
            "collectors": {
                "enabled": self.settings.collectors_enabled,
                "started": self.collectors_started,
                "restart_on_error": self.settings.collectors_restart_on_error,
                "restarts": dict(self.restarts),
            },
            "store": store,
            "streams": streams,
            "connections": connections,
        }
        return status == "ok", body

    def _stream_state(self, link: WsLink, st: TradeStream, now: float) -> str:
        if link.state.failed:
            return "failed"
        if st.spec.name in link.failed_streams:
            return "subscription_failed"
        if not self.collectors_started:
            return "starting"
        if not link.state.connected:
            return "connecting" if link.state.connects == 0 else "disconnected"
        last = link.last_message_at.get(st.spec.name)
        if last is None:
            since = link.state.connected_since or now
            return "stale" if now - since >= link.stale_after else "waiting"
        return "live" if now - last < link.stale_after else "stale"
