"""Instrument listings: which configured symbols each venue market lists and trades, every hour.

PROTOCOLS.md §5.8 and §5.11 ask to check symbols against the venue's list (``exchangeInfo``,
``instruments-info``) before relying on them, and §1.5 to read Binance's request-weight budget
from ``exchangeInfo.rateLimits`` rather than hard-code it. The same answers give each symbol's
price tick and quantity lot, which analytics use (they never guess a tick). One check per venue market serves
every collector of that market: a symbol that is not listed (or not trading) is reported on
its streams, like a refused subscription, so that its silence neither fails over the
connection it shares nor goes unexplained.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from wadm.errors import VenueProtocolError
from wadm.pipeline.collector import Collector
from wadm.records import Market, Venue
from wadm.transport.rest import RestClient, RestError
from wadm.venues.base import Instrument, ListingQuery

__all__ = ["LISTING_CHECK_EVERY", "ListingWatch"]

log = logging.getLogger(__name__)

LISTING_CHECK_EVERY = 3600.0


class ListingWatch:
    """Checks one venue market's listing at start and every hour; tells its collectors.

    Args:
        venue, market: the venue market.
        query: makes the venue's sans-IO listing query for some symbols.
        client: the REST client of that venue host.
        collectors: the collectors of that market.
    """

    def __init__(self, venue: Venue, market: Market, query: Callable[[Sequence[str]], ListingQuery],
                 client: RestClient, collectors: Sequence[Collector]) -> None:
        self.venue, self.market = venue, market
        self.query = query
        self.client = client
        self.collectors = list(collectors)
        self.symbols = sorted({st.spec.symbol for c in self.collectors for st in c.streams.values()})
        self.instruments: dict[str, Instrument] = {}  # the venue's tick and lot per symbol, as last read

    async def run(self) -> None:
        """Check now and every hour, forever."""
        while True:
            await self.check()
            await asyncio.sleep(LISTING_CHECK_EVERY)

    async def check(self) -> dict[str, str]:
        """Ask the venue once; apply the answer (best effort: without one, nothing changes)."""
        query = self.query(self.symbols)
        while (request := query.next_request()) is not None:
            try:
                query.on_answer(await self.client.fetch(request))
            except RestError as exc:
                log.info("%s/%s: could not read the instrument listing (%s)", self.venue, self.market, exc)
                query.on_error(exc.status)
            except VenueProtocolError as exc:
                log.info("%s/%s: the instrument listing could not be read (%s)", self.venue, self.market, exc)
                query.on_error(None)
        if query.weight_limit is not None and query.weight_limit != self.client.budget.limit:
            self.client.budget.set_limit(query.weight_limit)
            log.info("%s/%s: the venue allows %d request weight per minute", self.venue, self.market,
                     query.weight_limit)
        self.instruments.update(query.instruments)
        for collector in self.collectors:
            collector.set_listing(query.statuses, query.trading)
        for symbol, state in sorted(query.statuses.items()):
            if state != query.trading:
                log.error("%s/%s: %s is %s on the venue; its streams will stay empty", self.venue, self.market,
                          symbol, state, extra={"symbol": symbol})
        return query.statuses
