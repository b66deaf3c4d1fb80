"""Prometheus metrics, read from live state at scrape time.

Counters kept by the receive path are plain integers on the streams and links; this collector
turns them into metric families when ``/metrics`` is scraped, so the hot path pays nothing.
Writer flush sizes and durations are histograms observed once per batch. Names follow
``wadm_<component>_<name>_<unit>_total``; labels stay low-cardinality.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from wadm.book.sync import BookState
from wadm.pipeline.service import Service
from wadm.records import BatchKey
from wadm.venues.base import TradeStream
from wadm.venues.streams import BookStream, KlineStream

__all__ = ["Metrics"]

_STREAM_LABELS = ["venue", "market", "symbol", "channel"]


class _ServiceCollector(Collector):
    def __init__(self, service: Service) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        svc = self.service
        messages = CounterMetricFamily("wadm_collector_messages_total", "Frames received with data, per stream.",
                                       labels=_STREAM_LABELS)
        per_trade_stream = {
            "trades": ("wadm_collector_trades_total", "Trades accepted (de-duplicated), per stream."),
            "duplicates": ("wadm_collector_duplicate_trades_total", "Trades received twice (connection overlap)."),
            "missing_ids": ("wadm_collector_missing_trades_total", "Trades skipped in the venue's id sequence."),
            "rejected": ("wadm_collector_rejected_trades_total", "Trades with zero price or quantity."),
            "backfilled": ("wadm_collector_backfilled_trades_total", "Trades recovered over REST."),
        }
        families = {k: CounterMetricFamily(n, h, labels=_STREAM_LABELS) for k, (n, h) in per_trade_stream.items()}
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
        for _, st in svc.streams:
            labels = [str(st.venue), str(st.market), st.spec.symbol, st.spec.channel]
            messages.add_metric(labels, st.messages)
            pending.add_metric(labels, st.pending)
            dropped.add_metric([*labels, "buffer_full"], getattr(st, "dropped", 0))
            rest_failures.add_metric(labels, svc.recovery.failures.get(st.spec.name, 0))
            gaps.add_metric(labels, svc.writer.stats.gaps.get(st.spec.name, 0))
            if isinstance(st, TradeStream):
                for attr, fam in families.items():
                    fam.add_metric(labels, getattr(st, attr) + (st.pending if attr == "trades" else 0))
            elif isinstance(st, BookStream):
                book_live.add_metric(labels, 1.0 if st.state is BookState.LIVE else 0.0)
                snapshots.add_metric(labels, st.snapshots)
                for reason, count in st.sync.resyncs.items():
                    resyncs.add_metric([*labels, reason], count)
            elif isinstance(st, KlineStream):
                kline_backfill.add_metric(labels, st.backfilled)
        yield messages
        yield from families.values()
        yield from (pending, dropped, rest_failures, gaps, book_live, resyncs, snapshots, kline_backfill)

        budget_labels = ["host"]
        throttled = CounterMetricFamily("wadm_rest_throttled_total", "429 answers (rate limited).",
                                        labels=budget_labels)
        banned = CounterMetricFamily("wadm_rest_banned_total", "418 and 403 answers (IP ban, WAF block).",
                                     labels=budget_labels)
        requests = CounterMetricFamily("wadm_rest_requests_total", "REST requests sent.", labels=budget_labels)
        for client in {id(c): c for c in svc.recovery.clients.values()}.values():
            host = [client.base_url]
            throttled.add_metric(host, client.budget.throttled)
            banned.add_metric(host, client.budget.banned)
            requests.add_metric(host, client.requests)
        yield from (throttled, banned, requests)

        conn_labels = ["connection"]
        connected = GaugeMetricFamily("wadm_transport_connected", "1 while the connection is open.", labels=conn_labels)
        reconnects = CounterMetricFamily("wadm_transport_reconnects_total", "Reconnections.", labels=conn_labels)
        rotations = CounterMetricFamily("wadm_transport_rotations_total", "Make-before-break rotations.",
                                        labels=conn_labels)
        stale = CounterMetricFamily("wadm_transport_stale_reconnects_total", "Reconnects after a silent stream.",
                                    labels=conn_labels)
        failures = CounterMetricFamily("wadm_transport_connect_failures_total", "Failed connection attempts.",
                                       labels=conn_labels)
        errors = CounterMetricFamily("wadm_collector_errors_total", "Bad frames and venue errors, by kind.",
                                     labels=["connection", "kind"])
        for link in svc.links:
            name = [str(link.plan)]
            connected.add_metric(name, 1.0 if link.state.connected else 0.0)
            reconnects.add_metric(name, link.state.reconnects)
            rotations.add_metric(name, link.state.rotations)
            stale.add_metric(name, link.state.stale_reconnects)
            failures.add_metric(name, link.state.connect_failures)
            for kind, count in link.state.errors.items():
                errors.add_metric([*name, kind], count)
        yield from (connected, reconnects, rotations, stale, failures, errors)

        restarts = CounterMetricFamily("wadm_service_task_restarts_total", "Supervised task failures.",
                                       labels=["task"])
        for task, count in svc.restarts.items():
            restarts.add_metric([task], count)
        yield restarts

        wst = svc.writer.stats
        yield CounterMetricFamily("wadm_writer_batches_total", "Batches written to the store.", value=wst.batches)
        yield CounterMetricFamily("wadm_writer_rows_total", "Rows written to the store.", value=wst.rows)
        yield CounterMetricFamily("wadm_writer_store_errors_total", "Failed store writes (retried).",
                                  value=wst.store_errors)
        yield GaugeMetricFamily("wadm_writer_pending_rows", "Rows waiting for the store.",
                                value=svc.writer.pending_rows)
        wdropped = CounterMetricFamily("wadm_writer_dropped_rows_total", "Rows lost before the store, by reason.",
                                       labels=["reason"])
        for reason in ("store_backlog",):
            wdropped.add_metric([reason], wst.dropped_rows.get(reason, 0))
        yield wdropped
        latency = GaugeMetricFamily(
            "wadm_collector_receive_latency_seconds",
            "Exchange-to-receive latency (receive time minus trade time) over the last batch.",
            labels=[*_STREAM_LABELS, "quantile"],
        )
        for key, (q50, q99, qmax) in wst.latency.items():
            base = [str(key.venue), str(key.market), key.symbol, key.table]
            latency.add_metric([*base, "0.5"], q50)
            latency.add_metric([*base, "0.99"], q99)
            latency.add_metric([*base, "1"], qmax)
        yield latency


class Metrics:
    """The registry of one service: scrape-time collector plus per-batch histograms."""

    def __init__(self, service: Service) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_ServiceCollector(service))
        self.flush_rows = Histogram(
            "wadm_writer_flush_rows", "Rows per batch written.", ["table"], registry=self.registry,
            buckets=(10, 100, 1000, 5000, 10_000, 20_000, 50_000, 100_000),
        )
        self.flush_seconds = Histogram(
            "wadm_writer_flush_duration_seconds", "Time to write one batch.", ["table"], registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        service.on_batch.append(self._observe)

    def _observe(self, key: BatchKey, rows: int, seconds: float) -> None:
        self.flush_rows.labels(key.table).observe(rows)
        self.flush_seconds.labels(key.table).observe(seconds)
