"""``create_app``: the Falcon ASGI application over a service, its metrics and its store."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import falcon
import falcon.asgi

from wadm import __version__
from wadm.api.json import error_body, send_json
from wadm.api.resources.book import BookHistoryResource, BookResource
from wadm.api.resources.gaps import GapsResource
from wadm.api.resources.klines import KlinesResource
from wadm.api.resources.system import HealthResource, MetricsResource, OpenApiResource, SymbolsResource
from wadm.api.resources.trades import TradesResource
from wadm.errors import QueryError, StoreError
from wadm.metrics import Metrics
from wadm.pipeline.service import Service
from wadm.records import TRADES

__all__ = ["create_app"]

log = logging.getLogger(__name__)


class _Lifespan:
    """Starts the service with the app and stops it (flushing everything) on shutdown."""

    def __init__(self, service: Service, manage: bool) -> None:
        self.service = service
        self.manage = manage

    async def process_startup(self, scope: Mapping[str, Any], event: Mapping[str, Any]) -> None:
        if self.manage:
            await self.service.start()

    async def process_shutdown(self, scope: Mapping[str, Any], event: Mapping[str, Any]) -> None:
        if self.manage:
            await self.service.stop()


async def _query_error(req: falcon.asgi.Request, resp: falcon.asgi.Response, ex: QueryError, params: Any) -> None:
    send_json(resp, error_body(ex.code, str(ex), ex.parameter), ex.status)


async def _http_error(req: falcon.asgi.Request, resp: falcon.asgi.Response, ex: falcon.HTTPError, params: Any) -> None:
    code = {404: "not_found", 405: "method_not_allowed"}.get(ex.status_code, "http_error")
    message = ex.description or ex.title or "error"
    if ex.status_code == 404:
        message = f"no such path: {req.path}; see /openapi.json"
    elif ex.status_code == 405:
        message = f"{req.method} is not allowed on {req.path}; the API is read-only (GET)"
    send_json(resp, error_body(code, message), ex.status_code)
    if ex.headers:
        resp.set_headers(ex.headers)


async def _store_error(req: falcon.asgi.Request, resp: falcon.asgi.Response, ex: StoreError, params: Any) -> None:
    log.warning("Request %s %s could not read the store: %s", req.method, req.path, ex)
    send_json(resp, error_body("store_unavailable", f"the store could not answer: {ex}"), 503)
    resp.set_header("Retry-After", "5")


async def _internal_error(req: falcon.asgi.Request, resp: falcon.asgi.Response, ex: Exception, params: Any) -> None:
    log.error("Request %s %s failed: %r", req.method, req.path, ex, exc_info=ex)
    send_json(resp, error_body("internal_error", "the request failed inside the server; it was logged"), 500)


def create_app(service: Service, *, manage_service: bool = True) -> falcon.asgi.App[Any, Any]:
    """Build the ASGI app.

    Args:
        service: the collectors, writer and store the API reads.
        manage_service: start and stop the service in the app's lifespan.
    """
    metrics = Metrics(service)
    app: falcon.asgi.App[Any, Any] = falcon.asgi.App(middleware=_Lifespan(service, manage_service))
    app.req_options.strip_url_path_trailing_slash = True
    app.add_route("/health", HealthResource(service))
    app.add_route("/metrics", MetricsResource(metrics))
    app.add_route("/openapi.json", OpenApiResource(__version__))
    app.add_route("/api/v1/symbols", SymbolsResource(service))
    app.add_route("/api/v1/trades/{symbol}", TradesResource(
        service.settings, service.collected, service.store,
        lambda venue, market, symbol, start, end: service.unfinished(venue, market, symbol, TRADES, start, end)))
    app.add_route("/api/v1/gaps", GapsResource(service.settings, service.collected, service.store))
    app.add_route("/api/v1/klines/{symbol}", KlinesResource(service))
    app.add_route("/api/v1/orderbook/{symbol}", BookResource(service))
    app.add_route("/api/v1/orderbook/{symbol}/history", BookHistoryResource(service))
    app.add_error_handler(Exception, _internal_error)
    app.add_error_handler(falcon.HTTPError, _http_error)
    app.add_error_handler(QueryError, _query_error)
    app.add_error_handler(StoreError, _store_error)
    return app
