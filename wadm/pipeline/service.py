"""Wires collectors, writer, listings and retention together; start and stop.

One :class:`Service` per process. It builds one :class:`~wadm.pipeline.collector.Collector`
per connection plan, one REST client per venue host, one listing check per venue market and
one :class:`~wadm.pipeline.writer.Writer`, and runs them under a
:class:`~wadm.pipeline.supervisor.Supervisor`:

* **start**: collectors connect after ``COLLECTORS_START_DELAY`` whatever the store does; the
  store opens in the background (retried until it answers) and the writer writes once it has.
* **resume**: each stream asks the store where its data ends, on its own and concurrently; a
  slow store delays no connection, and an answer that comes after live data has arrived still
  leaves no silent hole (:mod:`wadm.pipeline.resume`).
* **bars**: the :class:`~wadm.pipeline.bars.BarScheduler` closes bars and stores indicator
  snapshots from the trades the collectors queue.
* **retention**: expired batches are swept every minute.
* **alerts**: with ``WADM_ALERT_WEBHOOK_URL``, conditions that last are posted there
  (:mod:`wadm.pipeline.alerts`).
* **spool**: batches the store cannot take (down, or behind) wait in a bounded spool on disk
  under ``WADM_DATA_DIR/spool``; a start writes what an earlier run left there first.
* **stop** (SIGTERM): connections close, REST jobs record what they could not recover, every
  buffer is cut and the writer drains within the deadline; what the store does not take in time
  goes to the spool.

What readers may know of all this is :attr:`Service.live` (:mod:`wadm.pipeline.live`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial

import httpx

from wadm.config import Settings
from wadm.errors import StoreError
from wadm.live import Series
from wadm.pipeline.alerts import Alerter
from wadm.pipeline.bars import BarScheduler
from wadm.pipeline.collector import Collector, CollectorSettings
from wadm.pipeline.listings import ListingWatch
from wadm.pipeline.live import ServiceView
from wadm.pipeline.resume import resume_streams
from wadm.pipeline.supervisor import Supervisor
from wadm.pipeline.writer import Writer
from wadm.records import Market, Venue
from wadm.store.base import Store
from wadm.store.spool import Spool
from wadm.transport.rest import RestClient, WeightBudget
from wadm.units import NS_PER_S
from wadm.venues import listing_query, plan_connections, rest_limit
from wadm.venues.base import ConnectionPlan, Instrument

__all__ = ["Service", "build_plans"]

log = logging.getLogger(__name__)

SWEEP_EVERY = 60.0
STORE_RETRY_EVERY = 5.0
STOP_DEADLINE = 25.0


def build_plans(settings: Settings) -> list[ConnectionPlan]:
    """Plan every connection the settings ask for: per venue market, groups per channel."""
    ws_urls = {(Venue.BINANCE, Market.SPOT): settings.binance_spot_ws_url,
               (Venue.BINANCE, Market.USDM): settings.binance_usdm_ws_url}
    return [
        plan
        for t in settings.targets
        for plan in plan_connections(
            t.venue, t.market, t.symbols, ws_urls.get((t.venue, t.market), settings.bybit_ws_url),
            channels=settings.channels, binance_trade_stream=settings.binance_trade_stream,
            max_rows=settings.buffer_max_rows, book_depth=settings.book_depth,
            bybit_book_depth=settings.bybit_book_depth, snapshot_depth=settings.book_snapshot_depth,
        )
    ]


def _rest_url(settings: Settings, venue: Venue, market: Market) -> str:
    if venue is Venue.BYBIT:
        return settings.bybit_rest_url
    return settings.binance_spot_rest_url if market is Market.SPOT else settings.binance_usdm_rest_url


class Service:
    """The collectors, writer, listing checks and sweeper of one process.

    Args:
        settings: validated settings.
        store: an unopened store; the service opens and closes it.
        use_aiofastnet: picows transport choice for the links (None: the loop's own, see WsLink).
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
        self.settings = settings
        self.store = store
        self.started_at = time.time()
        plans = build_plans(settings) if plans is None else plans
        if not settings.collectors_enabled:
            plans = []
        self.spool: Spool | None = None
        if settings.spool_max_bytes:
            spool = Spool(settings.data_dir / "spool", settings.spool_max_bytes)
            try:
                spool.open()  # what an earlier run left is written first
                self.spool = spool
            except OSError as exc:
                log.error("The spool folder %s cannot be used (%s): running without a spool, so a store outage "
                          "longer than WADM_WRITER_MAX_PENDING_ROWS rows loses data", spool.folder, exc)
        self.writer = Writer(store, max_pending_rows=settings.writer_max_pending_rows, spool=self.spool)
        # One REST client (and request budget) per venue host: Bybit's spot and linear share one.
        self.rest: dict[tuple[Venue, str], RestClient] = {}
        knobs = CollectorSettings(
            stale_after=settings.stale_after, rotate_after=settings.rotate_after,
            reconnect_min_delay=settings.reconnect_min_delay, reconnect_max_delay=settings.reconnect_max_delay,
            flush_rows=settings.flush_rows, flush_interval=settings.flush_interval,
            backfill_deadline=settings.backfill_deadline,
        )
        self.collectors = [
            Collector(plan, knobs, self.writer, self._client(plan.venue, plan.market, rest_transport),
                      use_aiofastnet=use_aiofastnet)
            for plan in plans
        ]
        by_market: dict[tuple[Venue, Market], list[Collector]] = {}
        for collector in self.collectors:
            by_market.setdefault((collector.plan.venue, collector.plan.market), []).append(collector)
        self.listings = [
            ListingWatch(venue, market, partial(listing_query, venue, market),
                         self._client(venue, market, rest_transport), found)
            for (venue, market), found in by_market.items()
        ]
        self.supervisor = Supervisor()
        self.bars = BarScheduler(settings, store, self.writer, self.collectors, self.instrument)
        self.collectors_started = False
        self.store_open = False
        self.live = ServiceView(self)
        self.alerter: Alerter | None = None
        if settings.alert_webhook_url:
            self.alerter = Alerter(settings, self.live)
            self.writer.gap_listeners.append(self.alerter.note_gaps)
        self._collector_tasks: list[asyncio.Task[None]] = []
        self._drain_task: asyncio.Task[None] | None = None

    def instrument(self, series: Series) -> Instrument | None:
        """The series' tick and lot as its venue's listing last gave them (None until read)."""
        for listing in self.listings:
            if listing.venue is series.venue and listing.market is series.market:
                return listing.instruments.get(series.symbol)
        return None

    def _client(self, venue: Venue, market: Market, transport: httpx.AsyncBaseTransport | None) -> RestClient:
        url = _rest_url(self.settings, venue, market)
        client = self.rest.get((venue, url))
        if client is None:
            client = self.rest[(venue, url)] = RestClient(url, WeightBudget.of(rest_limit(venue, market)),
                                                          transport=transport)
        return client

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Start the writer and sweeper, open the store in the background, start the collectors."""
        sup = self.supervisor
        sup.spawn("store-open", self._open_store, restart=True)
        self._drain_task = sup.spawn("writer-drain", self.writer.run_drain, restart=True)
        sup.spawn("retention", self._sweep_forever, restart=True)
        if self.alerter is not None:
            sup.spawn("alerts", self.alerter.run, restart=True)
        if self.collectors:
            sup.spawn("writer-cut", self._cut_forever, restart=True)
            if self.bars.series:
                sup.spawn("bars", self.bars.run, restart=True)
            if self.settings.book_snapshot_interval and any(c.has_books for c in self.collectors):
                sup.spawn("book-snapshots", self._sample_books, restart=True)
            sup.spawn("collectors", self._start_collectors, restart=False)

    async def _open_store(self) -> None:
        """Open the store, retrying until it answers; the writer waits for it."""
        while True:
            try:
                await self.store.open()
                break
            except StoreError as exc:
                log.error("The store is not available (%s); data waits in the %s and the store is retried", exc,
                          "spool" if self.spool is not None else "memory")
            await asyncio.sleep(STORE_RETRY_EVERY)
        self.store_open = True
        self.writer.ready.set()

    async def _start_collectors(self) -> None:
        await asyncio.sleep(self.settings.collectors_start_delay)
        restart = self.settings.collectors_restart_on_error
        for collector in self.collectors:
            self._collector_tasks.append(self.supervisor.spawn(
                collector.name, collector.run, restart=restart, on_give_up=collector.give_up))
        for listing in self.listings:
            self.supervisor.spawn(f"listing:{listing.venue}/{listing.market}", listing.run, restart=True)
        self.supervisor.spawn("resume", lambda: resume_streams(self.settings, self.store, self.writer,
                                                               self.collectors), restart=False)
        self.collectors_started = True
        log.info("Started %d collector connections for %d streams", len(self.collectors),
                 sum(len(c.streams) for c in self.collectors))

    async def _cut_forever(self) -> None:
        """Hand due stream buffers to the writer, a few times a second."""
        tick = max(0.02, min(0.1, self.settings.flush_interval / 4))
        while True:
            now = time.monotonic()
            for collector in self.collectors:
                collector.cut(now)
            await asyncio.sleep(tick)

    async def _sample_books(self) -> None:
        """Sample every live book each ``BOOK_SNAPSHOT_INTERVAL``, on the interval's wall-clock grid."""
        step = int(self.settings.book_snapshot_interval * NS_PER_S)
        last = 0
        while True:
            await asyncio.sleep((step - time.time_ns() % step) / NS_PER_S)
            tick = round(time.time_ns() / step) * step  # the grid point we woke for (timers may be early)
            if tick <= last:
                continue
            last = tick
            for collector in self.collectors:
                collector.sample_books(tick)

    async def _sweep_forever(self) -> None:
        retention = self.settings.retention()
        while True:
            await asyncio.sleep(min(SWEEP_EVERY, min(retention.values()) / 10))
            if not self.store_open:
                continue
            for table, seconds in retention.items():
                try:
                    deleted = await self.store.sweep(table, time.time_ns() - seconds * NS_PER_S)
                except StoreError as exc:
                    log.warning("Retention sweep of %s failed (%s); will retry", table, exc)
                    continue
                if deleted:
                    log.debug("retention removed %d %s batches", deleted, table)

    async def stop(self, deadline: float = STOP_DEADLINE) -> None:
        """Close the connections, write everything buffered, close the store."""
        for collector in self.collectors:
            collector.stop()
        if self._collector_tasks:
            await asyncio.wait(self._collector_tasks, timeout=5)
        for collector in self.collectors:
            await collector.close()  # running jobs record what they could not recover
        now = time.monotonic()
        for collector in self.collectors:
            collector.cut(now, force=True)  # the last rows; a buffer that overflowed notes its gap now
        self.writer.close()
        if self._drain_task is not None:
            await asyncio.wait([self._drain_task], timeout=deadline)
        self.writer.spill(force=True)  # what the store did not take in time waits on disk for the next start
        if self.writer.pending_rows:
            log.error("Shutting down with %d rows not written: the store did not accept them in time",
                      self.writer.pending_rows, extra={"rows": self.writer.pending_rows, "reason": "shutdown"})
        if self.spool is not None and not self.spool.empty:
            log.warning("Stopping with %d batches (%d bytes) in the spool; the next start writes them first",
                        self.spool.batches, self.spool.bytes)
        await self.supervisor.cancel_all()
        await self.bars.close()
        for client in self.rest.values():
            await client.close()
        if self.spool is not None:
            self.spool.close()
        await self.store.close()  # also when it never opened: a half-made client is released
        log.info("Stopped; %d batches (%d rows) written in all", self.writer.stats.batches, self.writer.stats.rows)
