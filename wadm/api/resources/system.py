"""``/health``, ``/metrics``, ``/openapi.json`` and ``/api/v1/symbols``."""

from __future__ import annotations

from typing import Any

import falcon.asgi
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from wadm.api.json import send_json
from wadm.api.openapi import openapi_document
from wadm.metrics import Metrics
from wadm.pipeline.service import Service

__all__ = ["HealthResource", "MetricsResource", "OpenApiResource", "SymbolsResource"]


class HealthResource:
    """200 when every configured stream is live and fresh and the store writes; else 503."""

    def __init__(self, service: Service) -> None:
        self.service = service

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        healthy, body = self.service.health()
        send_json(resp, body, 200 if healthy else 503)


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
    """What is collected."""

    def __init__(self, service: Service) -> None:
        self.service = service

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        svc = self.service
        since = int(svc.started_at * 1000)
        live: dict[tuple[object, object, str], list[tuple[Any, Any]]] = {}
        for link, st in svc.streams:
            live.setdefault((st.venue, st.market, st.spec.symbol), []).append((link, st))
        rows = []
        for target in svc.collected:
            for symbol in target.symbols:
                found = live.get((target.venue, target.market, symbol), [])
                rows.append({
                    "exchange": str(target.venue),
                    "market": str(target.market),
                    "symbol": symbol,
                    "streams": [st.spec.name for _, st in found],
                    "channels": [st.spec.channel for _, st in found],
                    "collecting": bool(found),
                    "since": since if found and any(link.state.connects for link, _ in found) else None,
                })
        send_json(resp, {"symbols": rows, "count": len(rows)})
