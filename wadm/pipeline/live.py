"""The service's :class:`~wadm.live.LiveView`: copies of live state for the API and metrics.

Every method reads and copies; none changes a collector, a link or a stream. Health states are
computed from the watchdog's marks, which only the links' own loops move.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

import polars as pl

from wadm.book.sync import BookState
from wadm.live import (
    BarsView,
    BookDetail,
    BookView,
    ConnectionHealth,
    HealthReport,
    HistogramView,
    KlineDetail,
    RestHostHealth,
    Series,
    SpoolHealth,
    StoreHealth,
    StreamHealth,
    TradeDetail,
    Unfinished,
)
from wadm.pipeline.collector import Collector
from wadm.pipeline.writer import Histogram
from wadm.records import KLINE_SCHEMA, TRADES, BatchKey
from wadm.units import NS_PER_MS
from wadm.venues.base import Instrument, Stream, TradeStream
from wadm.venues.streams import BookStream, KlineStream

if TYPE_CHECKING:
    from wadm.pipeline.service import Service

__all__ = ["ServiceView"]


def _series(st: Stream) -> Series:
    return Series(st.venue, st.market, st.spec.symbol)


def _histograms(hists: Mapping[str, Histogram]) -> dict[str, HistogramView]:
    return {table: HistogramView(h.buckets, tuple(h.counts), h.total, h.count) for table, h in hists.items()}


class ServiceView:
    """Reads a :class:`~wadm.pipeline.service.Service` for the API (see :class:`wadm.live.LiveView`)."""

    def __init__(self, service: Service) -> None:
        self._svc = service
        self._carriers: dict[Series, list[Collector]] = {}
        self._books: dict[Series, tuple[Collector, BookStream]] = {}
        self._klines: dict[Series, KlineStream] = {}
        self._streams: list[tuple[Collector, Stream]] = []
        for collector in service.collectors:
            for st in collector.streams.values():
                series = _series(st)
                self._streams.append((collector, st))
                self._carriers.setdefault(series, []).append(collector)
                if isinstance(st, BookStream):
                    self._books[series] = (collector, st)
                elif isinstance(st, KlineStream):
                    self._klines[series] = st

    @property
    def started_at(self) -> float:
        """Wall-clock seconds when the service was made."""
        return self._svc.started_at

    # -- health ------------------------------------------------------------------------------

    def health(self) -> HealthReport:
        """Every stream, connection, REST host and the store, now."""
        svc = self._svc
        now = time.monotonic()
        streams = tuple(self._stream_health(c, st, now) for c, st in self._streams)
        wst = svc.writer.stats
        store = StoreHealth(
            name=svc.store.name,
            ok=svc.store_open and wst.store_ok,
            pending_rows=svc.writer.pending_rows,
            pending_batches=svc.writer.pending_batches,
            written_rows=wst.rows,
            written_batches=wst.batches,
            store_errors=wst.store_errors,
            dropped_rows=dict(wst.dropped_rows),
            last_write_age_s=None if wst.last_write is None else round(time.time() - wst.last_write, 3),
            last_error=wst.last_error,
            latency=dict(wst.latency),
            flush_rows=_histograms(wst.flush_rows),
            flush_durations=_histograms(wst.flush_durations),
            spool=None if (sp := svc.spool) is None else SpoolHealth(
                bytes=sp.bytes, max_bytes=sp.max_bytes, batches=sp.batches,
                oldest_age_s=None if (at := sp.oldest_at()) is None else round((time.time_ns() - at) / 1e9, 3),
                dropped_batches=sp.dropped_batches, dropped_rows=sp.dropped_rows, torn_bytes=sp.torn_bytes,
                errors=wst.spool_errors + sp.sync_errors),
        )
        spooling = store.spool is not None and store.spool.batches > 0
        connections = tuple(self._connection_health(c, now) for c in svc.collectors)
        hosts = tuple(RestHostHealth(client.base_url, client.requests, client.budget.throttled, client.budget.banned)
                      for client in svc.rest.values())
        if not svc.settings.collectors_enabled:
            status = "ok" if store.ok and not spooling else "degraded"
        elif not svc.collectors_started:
            status = "starting"
        else:
            status = "ok" if store.ok and not spooling and all(s.state == "live" for s in streams) else "degraded"
        return HealthReport(
            status=status,
            time_ms=time.time_ns() // NS_PER_MS,
            uptime_s=round(time.time() - svc.started_at, 3),
            collectors_enabled=svc.settings.collectors_enabled,
            collectors_started=svc.collectors_started,
            restart_on_error=svc.settings.collectors_restart_on_error,
            restarts=dict(svc.supervisor.restarts),
            store=store,
            streams=streams,
            connections=connections,
            rest_hosts=hosts,
        )

    def _stream_health(self, collector: Collector, st: Stream, now: float) -> StreamHealth:
        link = collector.link
        name = st.spec.name
        last = link.last_message(name)
        detail: TradeDetail | BookDetail | KlineDetail
        if isinstance(st, TradeStream):
            detail = TradeDetail(st.trades + st.pending, st.duplicates, st.missing_ids, st.backfilled, st.rejected)
        elif isinstance(st, BookStream):
            live = st.state is BookState.LIVE
            detail = BookDetail(str(st.state), st.book.update_id if live else None,
                                (len(st.book.bids), len(st.book.asks)), dict(st.sync.resyncs), st.snapshots,
                                st.resubscribes, st.sync.duplicates)
        else:
            assert isinstance(st, KlineStream)
            detail = KlineDetail(None if st.open_bar is None else st.open_bar.ts_event // NS_PER_MS,
                                 st.last_closed if st.last_closed >= 0 else None, st.backfilled)
        return StreamHealth(
            series=_series(st),
            stream=name,
            channel=st.spec.channel,
            connection=collector.name,
            state=self._state(collector, st, now),
            connected=link.state.connected,
            last_message_age_s=None if last is None else round(now - last, 3),
            messages=st.messages,
            reconnects=link.state.reconnects,
            rest_failures=collector.failures.get(name, 0),
            gaps=self._svc.writer.stats.gaps.get(name, 0),
            error=link.excused(name),
            pending=st.pending,
            dropped=st.dropped,
            detail=detail,
        )

    def _state(self, collector: Collector, st: Stream, now: float) -> str:
        link = collector.link
        name = st.spec.name
        if link.state.failed:
            return "failed"
        if link.excused(name):
            return "subscription_failed"
        if not self._svc.collectors_started:
            return "starting"
        if not link.state.connected:
            return "connecting" if link.state.connects == 0 else "disconnected"
        last = link.last_message(name)
        allowed = link.silence_allowed.get(name, link.stale_after)
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

    @staticmethod
    def _connection_health(collector: Collector, now: float) -> ConnectionHealth:
        state = collector.link.state
        return ConnectionHealth(
            name=collector.name,
            url=collector.plan.url,
            connected=state.connected,
            connects=state.connects,
            reconnects=state.reconnects,
            rotations=state.rotations,
            stale_reconnects=state.stale_reconnects,
            connect_failures=state.connect_failures,
            age_s=None if state.connected_since is None else round(now - state.connected_since, 3),
            errors=dict(state.errors),
            last_error=state.last_error,
            failed=state.failed,
        )

    # -- series ------------------------------------------------------------------------------

    def collecting(self) -> Mapping[Series, tuple[tuple[str, str], ...]]:
        """The series collected here: (stream, channel) of each."""
        out: dict[Series, list[tuple[str, str]]] = {}
        for _, st in self._streams:
            out.setdefault(_series(st), []).append((st.spec.name, st.spec.channel))
        return {series: tuple(streams) for series, streams in out.items()}

    def connected_once(self, series: Series) -> bool:
        """True once a connection carrying the series has opened."""
        return any(c.link.state.connects for c in self._carriers.get(series, ()))

    def book(self, series: Series, depth: int) -> BookView | None:
        """A copy of the live book with ``depth`` levels per side."""
        found = self._books.get(series)
        if found is None:
            return None
        collector, st = found
        stale = self._state(collector, st, time.monotonic()) == "stale"
        resyncs = sum(st.sync.resyncs.values())
        if st.state is not BookState.LIVE:
            return BookView(str(st.state), stale, st.ts_update, st.ts_recv, None, [], [], None, None, {}, resyncs)
        bids, asks = st.levels(depth)
        mid, spread, bands = st.metrics()
        return BookView(str(st.state), stale, st.ts_update, st.ts_recv, st.book.update_id, bids, asks, mid, spread,
                        bands, resyncs)

    def instrument(self, series: Series) -> Instrument | None:
        """The tick and lot the venue's listing gave for the series."""
        return self._svc.instrument(series)

    def book_rows(self, series: Series) -> pl.DataFrame | None:
        """Snapshots taken but not handed to the store yet."""
        found = self._books.get(series)
        return None if found is None else found[1].take_copy()

    def kline_rows(self, series: Series) -> tuple[pl.DataFrame, pl.DataFrame] | None:
        """Closed bars not handed to the store yet, and the open bar."""
        st = self._klines.get(series)
        if st is None:
            return None
        closed = pl.DataFrame(st.rows, schema=KLINE_SCHEMA, orient="row")
        open_bar = pl.DataFrame([st.open_bar] if st.open_bar is not None else [], schema=KLINE_SCHEMA, orient="row")
        return closed, open_bar

    def bars(self, series: Series) -> BarsView | None:
        """Closed bars in memory and the trades of the minutes not closed yet."""
        scheduler = self._svc.bars
        st = scheduler.state(series)
        if st is None:
            return None
        return BarsView(st.closed_until, st.bars, scheduler.open_frames(series), st.row, st.row_source,
                        version=st.version, recent=st.recent,
                        recent_from=st.closed_until if st.recent_from is None else st.recent_from)

    def unfinished(self, key: BatchKey, start: int, end: int) -> list[Unfinished]:
        """Trades still being backfilled (trade series), and rows a slow store has not taken yet."""
        series = Series(key.venue, key.market, key.symbol)
        rows: list[Unfinished] = []
        if key.table == TRADES:
            for collector in self._carriers.get(series, ()):
                rows += [Unfinished(w.stream, w.start, w.end, "backfilling", w.missing)
                         for w in collector.pending_windows(key.symbol, start, end)]
        queued = self._svc.writer.behind(key, start, end, time.time_ns())
        if queued is not None:
            rows.append(Unfinished(key.table, queued.start, queued.end, queued.reason, queued.missing))
        return rows
