"""Sans-IO venue protocols: frames in, records and actions out.

Nothing in this package imports asyncio, sockets or database drivers. This module is the one
place that maps a (venue, market) to its module: connection plans, the REST budget of its host
and its listing query.
"""

from collections.abc import Sequence

from wadm.records import Market, Venue
from wadm.venues import binance, bybit
from wadm.venues.base import (
    Ack,
    Action,
    ConnectionPlan,
    Event,
    ListingQuery,
    RestLimit,
    ServerShutdown,
    StreamSpec,
    TradeStream,
    VenueErrorReply,
    VenueProtocol,
)

__all__ = [
    "Ack",
    "Action",
    "ConnectionPlan",
    "Event",
    "ServerShutdown",
    "StreamSpec",
    "TradeStream",
    "VenueErrorReply",
    "VenueProtocol",
    "listing_query",
    "plan_connections",
    "rest_limit",
]


def plan_connections(
    venue: Venue,
    market: Market,
    symbols: tuple[str, ...],
    ws_url: str,
    *,
    channels: Sequence[str],
    binance_trade_stream: str,
    max_rows: int,
    book_depth: int,
    bybit_book_depth: int,
    snapshot_depth: int,
) -> list[ConnectionPlan]:
    """Every connection one venue market needs: per channel, groups of streams within the venue's limits."""
    plans: list[ConnectionPlan] = []
    if venue is Venue.BINANCE:
        if "trades" in channels:
            plans += binance.plan_trade_connections(market, symbols, ws_url, trade_stream=binance_trade_stream,
                                                    max_rows=max_rows)
        if "book" in channels:
            plans += binance.plan_book_connections(market, symbols, ws_url, snapshot_depth=snapshot_depth,
                                                   book_depth=book_depth)
        if "klines" in channels:
            plans += binance.plan_kline_connections(market, symbols, ws_url)
    else:
        if "trades" in channels:
            plans += bybit.plan_trade_connections(market, symbols, ws_url, max_rows=max_rows)
        if "book" in channels:
            plans += bybit.plan_book_connections(market, symbols, ws_url, depth=bybit_book_depth,
                                                 snapshot_depth=snapshot_depth)
        if "klines" in channels:
            plans += bybit.plan_kline_connections(market, symbols, ws_url)
    return plans


def rest_limit(venue: Venue, market: Market) -> RestLimit:
    """The request budget of a venue market's REST host."""
    return binance.REST_LIMITS[market] if venue is Venue.BINANCE else bybit.REST_LIMIT


def listing_query(venue: Venue, market: Market, symbols: Sequence[str]) -> ListingQuery:
    """The venue's query for the listing status of ``symbols``."""
    if venue is Venue.BINANCE:
        return binance.BinanceListing(market, symbols)
    return bybit.BybitListing(market, symbols)
