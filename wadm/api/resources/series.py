"""What data resources share, and the base of resources about one collected series."""

from __future__ import annotations

from dataclasses import dataclass

from wadm.api.days import DayRows
from wadm.api.params import resolve_series
from wadm.api.query import Query
from wadm.api.sources import BarCache
from wadm.api.work import Work
from wadm.config import Settings
from wadm.live import LiveView, Series
from wadm.store.base import Store

__all__ = ["Context", "SeriesResource"]


@dataclass(frozen=True, slots=True)
class Context:
    """Everything a resource may use: settings, the store, the live view, the heavy-work gate, the
    cache of settled bars and the profile rows of settled days."""

    settings: Settings
    store: Store
    live: LiveView
    work: Work
    bars: BarCache
    days: DayRows


class SeriesResource:
    """Reads one series (a symbol on one exchange and market): resolves ``{symbol}``."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def series(self, query: Query, symbol: str) -> Series:
        """The series the request means; raises QueryError (400/404) otherwise."""
        venue, market = resolve_series(self.ctx.settings.targets, symbol, query.get("exchange"), query.get("market"))
        return Series(venue, market, symbol.upper())
