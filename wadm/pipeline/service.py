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

import httpx
import polars as pl

from wadm.book.sync import BookState
from wadm.config import Settings
from wadm.errors import StoreError
from wadm.pipeline.recovery import Recovery
from wadm.records import BOOK_SNAPSHOTS, KLINES, TRADES, BatchKey, Market, Venue
from wadm.store.base import Store
from wadm.transport.ws import Backoff, WsLink
from wadm.venues import binance, bybit
from wadm.venues.base import ConnectionPlan, Stream, TradeStream
from wadm.venues.streams import BookStream, KlineStream

__all__ = ["Service", "build_plans"]

log = logging.getLogger(__name__)

SWEEP_EVERY = 60.0
_CHANNEL_OF_TABLE = {TRADES: "trades", BOOK_SNAPSHOTS: "book", KLINES: "klines"}
STOP_DEADLINE = 25.0


def build_plans(settings: Settings) -> list[ConnectionPlan]:
    """Plan every connection the settings ask for: per market, one group each for trades, book, klines."""
    plans: list[ConnectionPlan] = []
    urls = {Market.SPOT: settings.binance_spot_ws_url, Market.USDM: settings.binance_usdm_ws_url}
    channels = settings.channels
    for target in settings.targets:
        market, symbols = target.market, target.symbols
        if target.venue is Venue.BINANCE:
            url = urls[market]
            if "trades" in channels:
                plans += binance.plan_trade_connections(
                    market, symbols, url, trade_stream=settings.binance_trade_stream, max_rows=settings.buffer_max_rows
                )
            if "book" in channels:
                plans += binance.plan_book_connections(
                    market, symbols, url, snapshot_depth=settings.book_snapshot_depth
                )
            if "klines" in channels:
                plans += binance.plan_kline_connections(market, symbols, url)
        else:
            url = settings.bybit_ws_url
            if "trades" in channels:
                plans += bybit.plan_trade_connections(market, symbols, url, max_rows=settings.buffer_max_rows)
            if "book" in channels:
                plans += bybit.plan_book_connections(market, symbols, url, depth=settings.bybit_book_depth,
                                                     snapshot_depth=settings.book_snapshot_depth)
            if "klines" in channels:
                plans += bybit.plan_kline_connections(market, symbols, url)
    return plans


class Service:
    """The collectors, writer and sweeper of one process.

    Args:
        settings: validated settings.
        store: an unopened store; the service opens and closes it.
        use_aiofastnet: picows transport choice for the links (None: picows' default).
        plans: connection plans to use instead of those the settings describe (tests, benchmarks).
        rest_transport: httpx transport of the REST clients (default: the network).
    """

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        use_aiofastnet: bool | None = None,
        plans: list[ConnectionPlan] | None = None,
        rest_transport: httpx.AsyncBaseTransport | None = None,
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
        self.streams: list[tuple[WsLink, Stream]] = [
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
        self.recovery = Recovery(settings, self.links, self.writer, transport=rest_transport)
        self.books: dict[tuple[Venue, Market, str], BookStream] = {}
        self.klines: dict[tuple[Venue, Market, str], KlineStream] = {}
        for _, st in self.streams:
            if isinstance(st, BookStream):
                self.books[(st.venue, st.market, st.spec.symbol)] = st
            elif isinstance(st, KlineStream):
                self.klines[(st.venue, st.market, st.spec.symbol)] = st
        self.started_at = time.time()
        self.collectors_started = False
        self.restarts: dict[str, int] = {}
        self.store_open = False
        self._tasks: list[asyncio.Task[None]] = []
        self._link_tasks: list[asyncio.Task[None]] = []
        self._drain_task: asyncio.Task[None] | None = None
        self._recovery_task: asyncio.Task[None] | None = None

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
            self._recovery_task = self._spawn("recovery", self.recovery.run, restart=True)
            if self.books:
                self._spawn("book-snapshots", self._sample_books, restart=True)
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
        if self.store_open:
            await self._resume()
        for link in self.links:
            self._link_tasks.append(
                self._spawn(str(link.plan), link.run, restart=self.settings.collectors_restart_on_error, link=link)
            )
        self.collectors_started = True
        log.info("Started %d collector connections for %d streams", len(self.links), len(self.streams))

    async def _resume(self) -> None:
        """Continue where the stored trades and klines end, so that a restart leaves no silent hole.

        Only data within its retention is resumed from: an older end is history, not a gap.
        """
        now = time.time_ns()
        resumed = 0
        for link, st in self.streams:
            if isinstance(st, TradeStream):
                horizon = now - self.settings.retention_raw_trades * 1_000_000_000
            elif isinstance(st, KlineStream):
                horizon = now - self.settings.retention_aggregates_1m * 1_000_000_000
            else:
                continue
            try:
                last = await self.store.latest(BatchKey(st.table, st.venue, st.market, st.spec.symbol))
            except StoreError as exc:
                log.warning("Could not read where %s ended (%s); collecting from now", st.spec.name, exc)
                continue
            if last.height == 0:
                continue  # nothing stored: a first start
            newest = last.sort("ts_event").row(-1, named=True)
            if isinstance(st, KlineStream):
                if newest["ts_event"] >= horizon:
                    st.resume(newest["ts_event"] // 1_000_000)
            elif newest["ts_event"] < horizon:
                st.resume(horizon, None)  # stored trades end before the window we keep: record it
            else:
                newest_id = last["id"].max() if st.venue is Venue.BINANCE else newest["id"]
                assert isinstance(newest_id, int | str)
                st.resume(newest["ts_event"], newest_id)
                remember = getattr(link.plan.protocol, "remember", None)
                if remember is not None:  # ids that cannot be ordered: the stored ones are not new
                    remember(st.spec.name, last["id"].cast(pl.String).to_list())
            resumed += 1
        if resumed:
            log.info("Resuming %d streams where the store ends; what was missed meanwhile is backfilled", resumed)

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

    async def _sample_books(self) -> None:
        """Queue a snapshot of every live book each ``BOOK_SNAPSHOT_INTERVAL``, on the interval's grid."""
        step = int(self.settings.book_snapshot_interval * 1_000_000_000)
        last = 0
        while True:
            await asyncio.sleep((step - time.time_ns() % step) / 1e9)
            tick = round(time.time_ns() / step) * step  # the grid point we woke for (timers may be early)
            if tick <= last:
                continue
            last = tick
            for book in self.books.values():
                book.sample(tick)

    async def _sweep_forever(self) -> None:
        retention = self.settings.retention()
        while True:
            await asyncio.sleep(min(SWEEP_EVERY, min(retention.values()) / 10))
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
        if self._recovery_task is not None:  # no new recovery jobs from here on
            self._recovery_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recovery_task
        await self.recovery.close()  # running jobs record what they could not recover
        self.writer.cut(force=True)  # the last trades; a buffer that overflowed notes its gap now
        self.recovery.record_leftovers()
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
            last = link.last_message_at.get(st.spec.name)
            entry: dict[str, Any] = {
                "exchange": str(st.venue),
                "market": str(st.market),
                "symbol": st.spec.symbol,
                "stream": st.spec.name,
                "channel": st.spec.channel,
                "state": self._stream_state(link, st, now),
                "connected": link.state.connected,
                "last_message_age_s": None if last is None else round(now - last, 3),
                "messages": st.messages,
                "reconnects": link.state.reconnects,
                "rest_failures": self.recovery.failures.get(st.spec.name, 0),
                "gaps": self.writer.stats.gaps.get(st.spec.name, 0),
                "error": link.failed_streams.get(st.spec.name),
            }
            entry |= _channel_detail(st)
            streams.append(entry)
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

    def unfinished(self, venue: Venue, market: Market, symbol: str, table: str, start: int,
                   end: int) -> list[dict[str, Any]]:
        """Windows of ``[start, end]`` (ns) that readers cannot see complete yet, as API gap rows:
        trades still being backfilled, and rows a slow store has not taken yet."""
        rows = self.recovery.pending_gaps(venue, market, symbol, start, end) if table == TRADES else []
        queued = self.writer.behind(BatchKey(table, venue, market, symbol), start, end, time.time_ns())
        if queued is not None:
            rows.append({"exchange": str(venue), "market": str(market), "symbol": symbol,
                         "channel": _CHANNEL_OF_TABLE.get(table, table), "stream": table,
                         "start": queued.start // 1_000_000, "end": queued.end // 1_000_000,
                         "reason": queued.reason, "missing": queued.missing})
        return rows

    def stream_state(self, st: Stream) -> str:
        """The health state of one stream (``live``, ``stale``, ``resyncing``...)."""
        link = next(link for link, s in self.streams if s is st)
        link.check_progress()
        return self._stream_state(link, st, time.monotonic())

    def _stream_state(self, link: WsLink, st: Stream, now: float) -> str:
        if link.state.failed:
            return "failed"
        if st.spec.name in link.failed_streams:
            return "subscription_failed"
        if not self.collectors_started:
            return "starting"
        if not link.state.connected:
            return "connecting" if link.state.connects == 0 else "disconnected"
        last = link.last_message_at.get(st.spec.name)
        allowed = link.silence_allowed.get(st.spec.name, link.stale_after)
        if last is None:
            since = link.state.connected_since or now
            return "stale" if now - since >= allowed else "waiting"
        if now - last >= allowed:
            return "stale"
        if isinstance(st, BookStream) and st.state is not BookState.LIVE:
            return "resyncing"  # a book that is not exact is not live, however fresh its messages
        if isinstance(st, BookStream) and not st.book.bids and not st.book.asks:
            return "empty"  # exact but without orders: delisted, halted or before an auction (Bybit u=1)
        return "live"


def _channel_detail(st: Stream) -> dict[str, Any]:
    """The counters health shows for one kind of stream."""
    if isinstance(st, TradeStream):
        return {
            "trades": st.trades + st.pending,
            "duplicates": st.duplicates,
            "missing_trades": st.missing_ids,
            "backfilled_trades": st.backfilled,
            "dropped": st.dropped,
        }
    if isinstance(st, BookStream):
        sync = st.sync
        return {
            "book_state": str(st.state),
            "update_id": sync.book.update_id if st.state is BookState.LIVE else None,
            "levels": [len(sync.book.bids), len(sync.book.asks)],
            "resyncs": sum(sync.resyncs.values()),
            "resync_reasons": dict(sync.resyncs),
            "snapshots": st.snapshots,
            "resubscribes": st.resubscribes,
            "duplicates": sync.duplicates,
            "dropped": st.dropped,
        }
    if isinstance(st, KlineStream):
        return {
            "open_bar": None if st.open_bar is None else st.open_bar[0] // 1_000_000,
            "last_closed": st.last_closed if st.last_closed >= 0 else None,
            "backfilled_klines": st.backfilled,
            "dropped": st.dropped,
        }
    return {}
