"""What the emulator core needs from a venue module (`binance`, `bybit`).

A venue owns a URL prefix (``/binance/``), turns request paths into
`Connection` objects that speak its control protocol, encodes synthetic trade
batches into its frames and builds its fault frames. Everything else (fan-out,
delivered log, limits, faults, HTTP control) is shared.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from wadm.emulator.connection import Connection
    from wadm.emulator.hub import Channel
    from wadm.emulator.market import Instrument, SyntheticFeed, TradeBatch
    from wadm.emulator.streams import Publisher

__all__ = ["TradePublisher", "Venue"]


class TradePublisher(Protocol):
    """Publishes a synthetic feed's batches on the venue's trade streams."""

    def __call__(self, batch: TradeBatch) -> None:
        """Encode the batch, queue it on every receiver and flush."""

    def listening(self) -> bool:
        """Whether any connection could receive the trades right now."""

    def backlogged(self) -> bool:
        """Whether some receiver has too much unsent data (the feed holds back)."""


class Venue(Protocol):
    """A venue served by the emulator."""

    name: str
    """Venue name, e.g. ``binance``."""
    markets: tuple[str, ...]
    """Markets of the venue, e.g. ``("spot", "usdm")``."""
    prefix: str
    """URL path prefix, e.g. ``/binance/``."""

    def urls(self, base: str) -> dict[str, str]:
        """Client base URL per market, given ``ws://HOST:PORT``."""

    def connect(self, path: str) -> Connection | None:
        """A connection for a request path, or None (404)."""

    def default_instrument(self, market: str, symbol: str, start_price: float | None) -> Instrument:
        """The default price/quantity grid of a symbol."""

    def trade_sink(self, market: str, symbol: str) -> TradePublisher:
        """The publisher of a synthetic feed for a symbol."""

    def timed_stream(self, stream: str) -> bool:
        """Whether a stream is a timed one (depth, order book, kline) that needs a book."""

    def publisher(self, channel: Channel, feed: SyntheticFeed) -> Publisher | None:
        """The publisher of a timed stream (the feed has a model), or None."""

    def stream_symbol(self, stream: str) -> str:
        """The upper-case symbol a stream belongs to."""

    def trade_ids(self, channel: Channel) -> list[Any]:
        """The delivered log of a trade stream in the venue's id form."""

    def shutdown_event(self, combined: bool) -> bytes:
        """A server-shutdown notice payload in the requested framing (b"": none)."""

    def pick_stream(self, conn: Connection) -> str | None:
        """The stream a fault frame for ``conn`` pretends to belong to."""

    def malformed(self, kind: str, channel: Channel, feed: SyntheticFeed | None) -> tuple[bytes, bytes]:
        """One malformed frame as ``(raw, combined)`` payloads."""
