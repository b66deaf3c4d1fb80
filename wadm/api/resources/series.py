"""The base of resources about one collected series (a symbol on one exchange and market)."""

from __future__ import annotations

import falcon.asgi

from wadm.api.params import resolve_series
from wadm.pipeline.service import Service
from wadm.records import Market, Venue

__all__ = ["SeriesResource"]


class SeriesResource:
    """Reads one series of a service: resolves ``{symbol}`` with ``exchange``/``market``."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def series(self, req: falcon.asgi.Request, symbol: str) -> tuple[Venue, Market, str]:
        """(venue, market, symbol) the request means; raises QueryError (400/404) otherwise."""
        venue, market = resolve_series(self.service.collected, symbol, req.get_param("exchange"),
                                       req.get_param("market"))
        return venue, market, symbol.upper()
