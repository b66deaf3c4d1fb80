"""Sans-IO venue protocols: frames in, records and actions out.

Nothing in this package imports asyncio, sockets or database drivers.
"""

from wadm.venues.base import (
    Ack,
    ConnectionPlan,
    Event,
    ServerShutdown,
    StreamSpec,
    TradeStream,
    VenueErrorReply,
    VenueProtocol,
)

__all__ = [
    "Ack",
    "ConnectionPlan",
    "Event",
    "ServerShutdown",
    "StreamSpec",
    "TradeStream",
    "VenueErrorReply",
    "VenueProtocol",
]
