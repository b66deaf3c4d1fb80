"""``create_app``: the Falcon ASGI application over the settings, a store and a live view; ``served``.

The API is read-only and shares its process with the collectors, so it is built to hold under
abuse: every answer is bounded, heavy work runs in a small pool behind a gate (429 past it), every
error is a JSON body that never shows a stack trace, a file path or driver text (those are
logged), and HEAD works wherever GET does.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Mapping
from typing import Any, Protocol

import falcon
import falcon.asgi
import falcon.routing

from wadm import __version__
from wadm.api.auth import Auth
from wadm.api.days import DayRows
from wadm.api.flow import FlowCache
from wadm.api.json import error_body, send_json
from wadm.api.metrics import Metrics
from wadm.api.resources.book import BookHistoryResource, BookResource
from wadm.api.resources.gaps import GapsResource
from wadm.api.resources.klines import KlinesResource
from wadm.api.resources.orderflow import CurrentFlowResource, FootprintResource
from wadm.api.resources.profile import VolumeProfileResource
from wadm.api.resources.series import Context
from wadm.api.resources.structure import IndicatorHistoryResource, MarketStructureResource
from wadm.api.resources.system import HealthResource, MetricsResource, OpenApiResource, SymbolsResource
from wadm.api.resources.trades import TradesResource
from wadm.api.sources import BarCache
from wadm.api.work import Work
from wadm.config import Settings
from wadm.errors import QueryError, StoreError
from wadm.live import LiveView
from wadm.store.base import Store

__all__ = ["Lifespan", "create_app", "served"]

log = logging.getLogger(__name__)


class Lifespan(Protocol):
    """What the app starts with its server and stops (flushing everything) on shutdown."""

    def start(self) -> Awaitable[None]:
        """Start."""
        ...

    def stop(self) -> Awaitable[None]:
        """Stop, writing what is buffered."""
        ...


class _Lifespan:
    def __init__(self, lifespan: Lifespan | None, work: Work, flow: FlowCache) -> None:
        self.lifespan = lifespan
        self.work = work
        self.flow = flow

    async def process_startup(self, scope: Mapping[str, Any], event: Mapping[str, Any]) -> None:
        if self.lifespan is not None:
            await self.lifespan.start()

    async def process_shutdown(self, scope: Mapping[str, Any], event: Mapping[str, Any]) -> None:
        if self.lifespan is not None:
            await self.lifespan.stop()
        self.work.close()
        self.flow.close()


class _HeadRouter(falcon.routing.CompiledRouter):
    """HEAD is GET without a body on every route: same status and headers (Falcon leaves the body out)."""

    def map_http_methods(self, resource: object, **kwargs: Any) -> dict[str, Any]:
        methods: dict[str, Any] = super().map_http_methods(resource, **kwargs)
        if "GET" in methods:
            methods.setdefault("HEAD", methods["GET"])
        return methods


_EMPTY_BODY = {"type": "http.request", "body": b"", "more_body": False}


def served(app: Any) -> Any:
    """The ASGI app as Granian should serve it: HTTP/1.0 accepted, request bodies never awaited.

    * Granian writes ``http_version`` ``"1"`` for HTTP/1.0 where the ASGI spec (and Falcon) say
      ``"1.0"``; Falcon refuses the scope, and every HTTP/1.0 request would be a 500.
    * The API is read-only and reads no request body, but Falcon waits for the first body event
      before it routes: a request that announces a body and never sends it would hold its
      connection forever, and a malformed body would end in Granian's own text 500. Falcon is
      given an empty body at once instead, and a request that came with a body is answered with
      ``connection: close`` (its unread body ends the connection).
    """

    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        if scope.get("http_version") == "1":
            scope["http_version"] = "1.0"
        has_body = any(name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0")
                       for name, value in scope.get("headers", ()))
        first = True

        async def no_body() -> Any:
            nonlocal first
            if first:
                first = False
                return _EMPTY_BODY
            return await receive()

        async def closing(event: dict[str, Any]) -> None:
            if event["type"] == "http.response.start":
                event = {**event, "headers": [*event.get("headers", ()), (b"connection", b"close")]}
            await send(event)

        await app(scope, no_body, closing if has_body else send)

    return wrapped


async def _query_error(req: falcon.asgi.Request, resp: falcon.asgi.Response, ex: QueryError, params: Any) -> None:
    send_json(resp, error_body(ex.code, str(ex), ex.parameter), ex.status)
    for name, value in ex.headers.items():
        resp.set_header(name, value)


async def _http_error(req: falcon.asgi.Request, resp: falcon.asgi.Response, ex: falcon.HTTPError, params: Any) -> None:
    code = {404: "not_found", 405: "method_not_allowed"}.get(ex.status_code, "http_error")
    message = ex.description or ex.title or "error"
    if ex.status_code == 404:
        message = "no such path; see /openapi.json"
    elif ex.status_code == 405:
        message = f"{req.method[:10]} is not allowed; the API is read-only (GET and HEAD)"
    send_json(resp, error_body(code, message), ex.status_code)
    if ex.headers:
        resp.set_headers(ex.headers)


async def _store_error(req: falcon.asgi.Request, resp: falcon.asgi.Response, ex: StoreError, params: Any) -> None:
    # The detail (a file path, a host, driver text) is for the operator's log, not for clients.
    log.warning("A request could not read the store: %s", ex, extra={"path": req.path[:200]})
    send_json(resp, error_body("store_unavailable", "the store cannot answer right now; retry shortly"), 503)
    resp.set_header("Retry-After", "5")


async def _internal_error(req: falcon.asgi.Request, resp: falcon.asgi.Response, ex: Exception, params: Any) -> None:
    log.error("A request failed: %r", ex, exc_info=ex, extra={"path": req.path[:200]})
    send_json(resp, error_body("internal_error", "the request failed inside the server; it was logged"), 500)


def create_app(
    settings: Settings,
    store: Store,
    live: LiveView,
    *,
    lifespan: Lifespan | None = None,
    data: bool = True,
) -> falcon.asgi.App[Any, Any]:
    """Build the ASGI app.

    Args:
        settings: validated settings (what is configured, retention, API bounds).
        store: the store data endpoints read.
        live: what the collectors of this process say (a read-only view).
        lifespan: started and stopped with the server (the collecting service), if any.
        data: serve ``/api/v1/*``; without, only ``/health``, ``/metrics`` and ``/openapi.json``
            (``wadm collect``, when ``wadm serve`` processes answer the API).
    """
    work = Work(running=settings.api_concurrency, waiting=settings.api_queue)
    ctx = Context(settings=settings, store=store, live=live, work=work, bars=BarCache(settings),
                  days=DayRows())
    flow = FlowCache()
    auth = Auth(settings.api_keys, settings.rate_limit, settings.rate_burst)
    app: falcon.asgi.App[Any, Any] = falcon.asgi.App(middleware=[_Lifespan(lifespan, work, flow), auth],
                                                     router=_HeadRouter())
    app.req_options.strip_url_path_trailing_slash = True
    app.req_options.keep_blank_qs_values = True
    app.add_route("/health", HealthResource(ctx))
    app.add_route("/metrics", MetricsResource(Metrics(live, work)))
    app.add_route("/openapi.json", OpenApiResource(__version__))
    if data:
        _data_routes(app, ctx, flow)
    app.add_error_handler(Exception, _internal_error)
    app.add_error_handler(falcon.HTTPError, _http_error)
    app.add_error_handler(QueryError, _query_error)
    app.add_error_handler(StoreError, _store_error)
    return app


def _data_routes(app: falcon.asgi.App[Any, Any], ctx: Context, flow: FlowCache) -> None:
    app.add_route("/api/v1/symbols", SymbolsResource(ctx))
    app.add_route("/api/v1/trades/{symbol}", TradesResource(ctx))
    app.add_route("/api/v1/gaps", GapsResource(ctx))
    app.add_route("/api/v1/klines/{symbol}", KlinesResource(ctx))
    app.add_route("/api/v1/orderbook/{symbol}", BookResource(ctx))
    app.add_route("/api/v1/orderbook/{symbol}/history", BookHistoryResource(ctx))
    app.add_route("/api/v1/volume-profile/{symbol}", VolumeProfileResource(ctx))
    app.add_route("/api/v1/order-flow/current/{symbol}", CurrentFlowResource(ctx, flow))
    app.add_route("/api/v1/order-flow/{symbol}/footprint", FootprintResource(ctx))
    app.add_route("/api/v1/market-structure/{symbol}", MarketStructureResource(ctx))
    app.add_route("/api/v1/indicators/{symbol}/history", IndicatorHistoryResource(ctx))
