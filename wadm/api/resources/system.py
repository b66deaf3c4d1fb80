"""``/health``, ``/metrics``, ``/openapi.json`` and ``/api/v1/symbols``: light answers, read on the loop.

They take no parameters and ignore a query string (a cache-busting ``?t=...`` from a monitor is
harmless here); the data endpoints refuse parameters they do not know.
"""

from __future__ import annotations

from typing import Any

import falcon.asgi
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from wadm.api.auth import authorized
from wadm.api.json import send_json
from wadm.api.metrics import Metrics
from wadm.api.openapi import openapi_document
from wadm.api.resources.series import Context
from wadm.live import BookDetail, HealthReport, KlineDetail, Series, StreamHealth, TradeDetail

__all__ = ["HealthResource", "MetricsResource", "OpenApiResource", "SymbolsResource", "health_body"]


def _detail(s: StreamHealth) -> dict[str, Any]:
    d = s.detail
    if isinstance(d, TradeDetail):
        return {"trades": d.trades, "duplicates": d.duplicates, "missing_trades": d.missing_trades,
                "backfilled_trades": d.backfilled_trades, "dropped": s.dropped}
    if isinstance(d, BookDetail):
        return {"book_state": d.book_state, "update_id": d.update_id, "levels": list(d.levels),
                "resyncs": sum(d.resyncs.values()), "resync_reasons": dict(d.resyncs), "snapshots": d.snapshots,
                "resubscribes": d.resubscribes, "duplicates": d.duplicates, "dropped": s.dropped}
    assert isinstance(d, KlineDetail)
    return {"open_bar": d.open_bar, "last_closed": d.last_closed, "backfilled_klines": d.backfilled_klines,
            "dropped": s.dropped}


def health_body(report: HealthReport) -> dict[str, Any]:
    """The ``/health`` answer: overall status, collectors, store, every stream and connection."""
    store = report.store
    return {
        "status": report.status,
        "time": report.time_ms,
        "uptime_s": report.uptime_s,
        "collectors": {
            "enabled": report.collectors_enabled,
            "started": report.collectors_started,
            "restart_on_error": report.restart_on_error,
            "restarts": dict(report.restarts),
        },
        "store": {
            "name": store.name,
            "ok": store.ok,
            "pending_rows": store.pending_rows,
            "pending_batches": store.pending_batches,
            "written_rows": store.written_rows,
            "dropped_rows": sum(store.dropped_rows.values()),
            "last_write_age_s": store.last_write_age_s,
            "last_error": store.last_error,
            "spool": None if (sp := store.spool) is None else {
                "bytes": sp.bytes, "max_bytes": sp.max_bytes, "batches": sp.batches,
                "oldest_age_s": sp.oldest_age_s, "dropped_batches": sp.dropped_batches,
                "dropped_rows": sp.dropped_rows, "torn_bytes": sp.torn_bytes, "errors": sp.errors,
            },
        },
        "streams": [
            {
                "exchange": str(s.series.venue),
                "market": str(s.series.market),
                "symbol": s.series.symbol,
                "stream": s.stream,
                "channel": s.channel,
                "state": s.state,
                "connected": s.connected,
                "last_message_age_s": s.last_message_age_s,
                "messages": s.messages,
                "reconnects": s.reconnects,
                "rest_failures": s.rest_failures,
                "gaps": s.gaps,
                "error": s.error,
            } | _detail(s)
            for s in report.streams
        ],
        "connections": [
            {
                "name": c.name,
                "url": c.url,
                "connected": c.connected,
                "connects": c.connects,
                "reconnects": c.reconnects,
                "rotations": c.rotations,
                "stale_reconnects": c.stale_reconnects,
                "connect_failures": c.connect_failures,
                "age_s": c.age_s,
                "errors": dict(c.errors),
                "last_error": c.last_error,
                "failed": c.failed,
            }
            for c in report.connections
        ],
    }


class HealthResource:
    """200 when every configured stream is live and fresh and the store writes; else 503."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        report = self.ctx.live.health()
        status = 200 if report.healthy else 503
        auth = "api_keys" if self.ctx.settings.api_keys else "none"
        if not authorized(req):  # keys are set and this request has none: the status only
            send_json(resp, {"status": report.status}, status)
            return
        send_json(resp, health_body(report) | {"auth": auth}, status)


class MetricsResource:
    """Prometheus text format."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.content_type = CONTENT_TYPE_LATEST
        resp.data = generate_latest(self.metrics.registry)


class OpenApiResource:
    """The OpenAPI document."""

    def __init__(self, version: str) -> None:
        self.document = openapi_document(version)

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        send_json(resp, self.document)


class SymbolsResource:
    """What is collected (or was: ``wadm serve`` answers for the configured symbols from the store)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        live = self.ctx.live
        since = int(live.started_at * 1000)
        collecting = live.collecting()
        rows = []
        for target in self.ctx.settings.targets:
            for symbol in target.symbols:
                series = Series(target.venue, target.market, symbol)
                streams = collecting.get(series, ())
                instrument = live.instrument(series)
                rows.append({
                    "exchange": str(target.venue),
                    "market": str(target.market),
                    "symbol": symbol,
                    "streams": [name for name, _ in streams],
                    "channels": [channel for _, channel in streams],
                    "collecting": bool(streams),
                    "since": since if streams and live.connected_once(series) else None,
                    # The venue's price and quantity increments (null until its listing was read).
                    "tick_size": None if instrument is None else instrument.tick,
                    "lot_size": None if instrument is None else instrument.lot,
                })
        send_json(resp, {"symbols": rows, "count": len(rows)})

