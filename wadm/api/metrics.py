"""Prometheus metrics, read from the live view at scrape time.

Counters kept by the receive path are plain integers on the streams and links; this collector
turns a :class:`~wadm.live.HealthReport` into metric families when ``/metrics`` is scraped, so
the hot path pays nothing. The writer's flush sizes and durations are bucket counts kept per
batch and shown as histograms. Names follow ``wadm_<component>_<name>_<unit>_total``; labels
stay low-cardinality.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from wadm.api.work import Work
from wadm.live import BookDetail, HealthReport, HistogramView, KlineDetail, LiveView, TradeDetail

__all__ = ["Metrics"]

_STREAM_LABELS = ["venue", "market", "symbol", "channel"]
_TRADE_COUNTERS: tuple[tuple[str, str, Callable[[TradeDetail], int]], ...] = (
    ("wadm_collector_trades_total", "Trades accepted (de-duplicated), per stream.", lambda d: d.trades),
    ("wadm_collector_duplicate_trades_total", "Trades received twice (connection overlap).",
     lambda d: d.duplicates),
    ("wadm_collector_missing_trades_total", "Trades skipped in the venue's id sequence.",
     lambda d: d.missing_trades),
    ("wadm_collector_rejected_trades_total", "Trades with zero price or quantity.", lambda d: d.rejected),
    ("wadm_collector_backfilled_trades_total", "Trades recovered over REST.", lambda d: d.backfilled_trades),
)


def _streams(report: HealthReport) -> Iterator[Metric]:
    messages = CounterMetricFamily("wadm_collector_messages_total", "Frames received with data, per stream.",
                                   labels=_STREAM_LABELS)
    trade = [(CounterMetricFamily(name, doc, labels=_STREAM_LABELS), value) for name, doc, value in _TRADE_COUNTERS]
    pending = GaugeMetricFamily("wadm_buffer_rows", "Rows waiting in a stream buffer.", labels=_STREAM_LABELS)
    dropped = CounterMetricFamily(
        "wadm_buffer_dropped_rows_total", "Rows dropped, by reason.", labels=[*_STREAM_LABELS, "reason"]
    )
    rest_failures = CounterMetricFamily("wadm_recovery_rest_failures_total",
                                        "Failed REST attempts (snapshots, backfill), per stream.",
                                        labels=_STREAM_LABELS)
    book_live = GaugeMetricFamily("wadm_book_live", "1 while the book is exact, 0 while it resyncs.",
                                  labels=_STREAM_LABELS)
    resyncs = CounterMetricFamily("wadm_book_resyncs_total", "Books discarded and rebuilt, by reason.",
                                  labels=[*_STREAM_LABELS, "reason"])
    snapshots = CounterMetricFamily("wadm_book_snapshots_total", "Book snapshots applied (REST or in-band).",
                                    labels=_STREAM_LABELS)
    gaps = CounterMetricFamily("wadm_gaps_recorded_total", "Windows of missing data recorded in the gaps table.",
                               labels=_STREAM_LABELS)
    kline_backfill = CounterMetricFamily("wadm_collector_backfilled_klines_total",
                                         "Closed klines recovered over REST.", labels=_STREAM_LABELS)
    live = GaugeMetricFamily("wadm_stream_live", "1 while the stream is live and fresh, 0 while it is down, stale "
                             "or resyncing (the state /health shows).", labels=_STREAM_LABELS)
    age = GaugeMetricFamily("wadm_stream_last_message_age_seconds",
                            "Seconds since the stream's last data frame (absent before the first).",
                            labels=_STREAM_LABELS)
    for s in report.streams:
        labels = [str(s.series.venue), str(s.series.market), s.series.symbol, s.channel]
        live.add_metric(labels, 1.0 if s.state == "live" else 0.0)
        if s.last_message_age_s is not None:
            age.add_metric(labels, s.last_message_age_s)
        messages.add_metric(labels, s.messages)
        pending.add_metric(labels, s.pending)
        dropped.add_metric([*labels, "buffer_full"], s.dropped)
        rest_failures.add_metric(labels, s.rest_failures)
        gaps.add_metric(labels, s.gaps)
        d = s.detail
        if isinstance(d, TradeDetail):
            for family, value in trade:
                family.add_metric(labels, value(d))
        elif isinstance(d, BookDetail):
            book_live.add_metric(labels, 1.0 if d.book_state == "live" else 0.0)
            snapshots.add_metric(labels, d.snapshots)
            for reason, count in d.resyncs.items():
                resyncs.add_metric([*labels, reason], count)
        elif isinstance(d, KlineDetail):
            kline_backfill.add_metric(labels, d.backfilled_klines)
    yield live
    yield age
    yield messages
    yield from (family for family, _ in trade)
    yield from (pending, dropped, rest_failures, gaps, book_live, resyncs, snapshots, kline_backfill)


def _transport(report: HealthReport) -> Iterator[Metric]:
    host = ["host"]
    throttled = CounterMetricFamily("wadm_rest_throttled_total", "429 answers (rate limited).", labels=host)
    banned = CounterMetricFamily("wadm_rest_banned_total", "418 and 403 answers (IP ban, WAF block).", labels=host)
    requests = CounterMetricFamily("wadm_rest_requests_total", "REST requests sent.", labels=host)
    for h in report.rest_hosts:
        throttled.add_metric([h.host], h.throttled)
        banned.add_metric([h.host], h.banned)
        requests.add_metric([h.host], h.requests)
    yield from (throttled, banned, requests)

    conn = ["connection"]
    connected = GaugeMetricFamily("wadm_transport_connected", "1 while the connection is open.", labels=conn)
    reconnects = CounterMetricFamily("wadm_transport_reconnects_total", "Reconnections.", labels=conn)
    rotations = CounterMetricFamily("wadm_transport_rotations_total", "Make-before-break rotations.", labels=conn)
    stale = CounterMetricFamily("wadm_transport_stale_reconnects_total", "Reconnects after a silent stream.",
                                labels=conn)
    failures = CounterMetricFamily("wadm_transport_connect_failures_total", "Failed connection attempts.",
                                   labels=conn)
    errors = CounterMetricFamily("wadm_collector_errors_total", "Bad frames and venue errors, by kind.",
                                 labels=["connection", "kind"])
    for c in report.connections:
        connected.add_metric([c.name], 1.0 if c.connected else 0.0)
        reconnects.add_metric([c.name], c.reconnects)
        rotations.add_metric([c.name], c.rotations)
        stale.add_metric([c.name], c.stale_reconnects)
        failures.add_metric([c.name], c.connect_failures)
        for kind, count in c.errors.items():
            errors.add_metric([c.name, kind], count)
    yield from (connected, reconnects, rotations, stale, failures, errors)

    restarts = CounterMetricFamily("wadm_service_task_restarts_total", "Supervised task failures.", labels=["task"])
    for task, count in report.restarts.items():
        restarts.add_metric([task], count)
    yield restarts


def _histogram(name: str, doc: str, hists: Mapping[str, HistogramView]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=["table"])
    for table, h in hists.items():
        cumulative, running = [], 0
        for bound, count in zip((*map(str, h.buckets), "+Inf"), h.counts, strict=True):
            running += count
            cumulative.append((bound, float(running)))
        family.add_metric([table], cumulative, h.total)
    return family


def _writer(report: HealthReport) -> Iterator[Metric]:
    store = report.store
    yield GaugeMetricFamily("wadm_store_up", "1 while the store is open and its writes succeed.",
                            value=1.0 if store.ok else 0.0)
    yield GaugeMetricFamily("wadm_healthy", "1 while /health answers 200 (status ok).",
                            value=1.0 if report.healthy else 0.0)
    yield CounterMetricFamily("wadm_writer_batches_total", "Batches written to the store.",
                              value=store.written_batches)
    yield CounterMetricFamily("wadm_writer_rows_total", "Rows written to the store.", value=store.written_rows)
    yield CounterMetricFamily("wadm_writer_store_errors_total", "Failed store writes (retried).",
                              value=store.store_errors)
    yield GaugeMetricFamily("wadm_writer_pending_rows", "Rows waiting for the store.", value=store.pending_rows)
    dropped = CounterMetricFamily("wadm_writer_dropped_rows_total", "Rows lost before the store, by reason.",
                                  labels=["reason"])
    for reason in ("store_backlog", "spool_full"):
        dropped.add_metric([reason], store.dropped_rows.get(reason, 0))
    yield dropped
    if (sp := store.spool) is not None:
        yield GaugeMetricFamily("wadm_spool_bytes", "Bytes in the on-disk spool waiting for the store.", value=sp.bytes)
        yield GaugeMetricFamily("wadm_spool_max_bytes", "The spool's bound (WADM_SPOOL_MAX_BYTES).",
                                value=sp.max_bytes)
        yield GaugeMetricFamily("wadm_spool_batches", "Batches in the spool waiting for the store.", value=sp.batches)
        yield GaugeMetricFamily("wadm_spool_oldest_age_seconds",
                                "Age of the oldest batch in the spool (0 when it is empty).",
                                value=sp.oldest_age_s or 0.0)
        yield CounterMetricFamily("wadm_spool_dropped_batches_total", "Batches dropped from a full spool.",
                                  value=sp.dropped_batches)
        yield CounterMetricFamily("wadm_spool_torn_bytes_total",
                                  "Bytes of an unfinished spool write cut off at start.", value=sp.torn_bytes)
        yield CounterMetricFamily("wadm_spool_errors_total", "Spool writes that failed (disk full or gone).",
                                  value=sp.errors)
    yield _histogram("wadm_writer_flush_rows", "Rows per batch written.", store.flush_rows)
    yield _histogram("wadm_writer_flush_duration_seconds", "Time to write one batch.", store.flush_durations)
    latency = GaugeMetricFamily(
        "wadm_collector_receive_latency_seconds",
        "Exchange-to-receive latency (receive time minus trade time) over the last batch.",
        labels=[*_STREAM_LABELS, "quantile"],
    )
    for key, (q50, q99, qmax) in store.latency.items():
        base = [str(key.venue), str(key.market), key.symbol, key.table]
        latency.add_metric([*base, "0.5"], q50)
        latency.add_metric([*base, "0.99"], q99)
        latency.add_metric([*base, "1"], qmax)
    yield latency


class _LiveCollector(Collector):
    def __init__(self, live: LiveView, work: Work) -> None:
        self.live = live
        self.work = work

    def collect(self) -> Iterator[Metric]:
        report = self.live.health()
        yield from _streams(report)
        yield from _transport(report)
        yield from _writer(report)
        api = CounterMetricFamily("wadm_api_heavy_requests_total", "Heavy API requests, by outcome.",
                                  labels=["outcome"])
        api.add_metric(["admitted"], self.work.admitted)
        api.add_metric(["refused"], self.work.refused)
        yield api


class Metrics:
    """The registry of one process, read from its live view at scrape time."""

    def __init__(self, live: LiveView, work: Work) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_LiveCollector(live, work))
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, process_cpu_seconds_total...
