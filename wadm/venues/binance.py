"""Binance spot and USD-M: stream names, routes and stream decoding (sans-IO).

The REST side (request specs, answers, backfill, listings) is in :mod:`wadm.venues.binance_rest`,
re-exported here: ``binance.snapshot_request`` and the like are the venue's one vocabulary.

Connections use combined streams (``/stream?streams=a/b``) so each frame names its stream and
subscriptions cost no control messages. USD-M routes streams by path since 2026: ``/market``
carries ``@aggTrade`` and klines, ``/public`` carries depth, bookTicker and ``@trade``; a stream
on the wrong route is acknowledged and then silent, so routing lives here, in one table.

Decoding is one msgspec pass into typed structs (``bench/bench_parse.py`` measured it against
plain ``orjson.loads``). Frames that do not match the typed path (acks, errors, unknown events)
take a slower fallback that classifies them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Generic, TypeVar

import msgspec
import orjson

from wadm.book.sync import BinanceBookSync
from wadm.errors import VenueProtocolError
from wadm.records import KlineRow, Market, Venue
from wadm.units import NS_PER_MS
from wadm.venues.base import (
    NO_EVENTS,
    Ack,
    Action,
    ConnectionPlan,
    Event,
    HoldingProtocol,
    ProtocolBase,
    ServerShutdown,
    StreamSpec,
    TradeStream,
    VenueErrorReply,
    VenueProtocol,
)
from wadm.venues.binance_rest import (
    REST_LIMITS,
    TRADING,
    AggTradeBackfill,
    BinanceListing,
    agg_trade_backfill,
    agg_trades_request,
    decode_agg_trades,
    decode_exchange_info,
    decode_klines,
    decode_snapshot,
    klines_request,
    snapshot_limit,
    snapshot_request,
    snapshot_weight,
    trades_to_frame,
)
from wadm.venues.streams import KLINE_MIN_SILENCE, BookStream, KlineStream

__all__ = [
    "MAX_STREAMS_PER_CONNECTION",
    "REST_LIMITS",
    "TRADING",
    "AggTradeBackfill",
    "BinanceBookProtocol",
    "BinanceKlineProtocol",
    "BinanceListing",
    "BinanceProtocol",
    "agg_trades_request",
    "decode_agg_trades",
    "decode_exchange_info",
    "decode_klines",
    "decode_snapshot",
    "klines_request",
    "plan_book_connections",
    "plan_kline_connections",
    "plan_trade_connections",
    "snapshot_limit",
    "snapshot_request",
    "snapshot_weight",
    "stream_route",
    "trades_to_frame",
]

MAX_STREAMS_PER_CONNECTION = 200  # the venue allows 1024; smaller groups limit the blast radius
MAX_LIFETIME = 24 * 3600.0


class Trade(msgspec.Struct, tag_field="e", tag="trade", frozen=True, gc=False):
    """``<symbol>@trade``: one fill. Fields we do not use (``E``, ``s``, ``M``, ``X``) are skipped."""

    id: int = msgspec.field(name="t")  # trade id, contiguous per symbol
    p: float  # price (a decimal string on the wire)
    q: float  # quantity (a decimal string on the wire)
    T: int  # trade time, ms
    m: bool  # buyer is the maker: True means the seller was the aggressor


class AggTrade(msgspec.Struct, tag_field="e", tag="aggTrade", frozen=True, gc=False):
    """``<symbol>@aggTrade``: fills of one taker order (spot) or same price and side per 100 ms (USD-M).

    Fields we do not use (``E``, ``s``, ``f``, ``l``, ``M``) are skipped.
    """

    id: int = msgspec.field(name="a")  # aggregate trade id, contiguous per symbol
    p: float  # price (a decimal string on the wire)
    q: float  # quantity (a decimal string on the wire)
    T: int  # trade time, ms
    m: bool  # buyer is the maker: True means the seller was the aggressor


class Shutdown(msgspec.Struct, tag_field="e", tag="serverShutdown", frozen=True):
    """``!serverShutdown``: the server will close the connection; reconnect now."""

    E: int  # event time, ms


class Combined(msgspec.Struct, frozen=True, gc=False):
    """The combined-stream wrapper."""

    stream: str  # stream name, e.g. "btcusdt@aggTrade"
    data: Trade | AggTrade | Shutdown


# PERF: strict=False lets msgspec parse the decimal strings of prices and quantities straight
# into floats while decoding (no Python str per field, no later cast); bench_parse.py measured
# this path against orjson.loads and against keeping strings for a polars cast.
_decode_combined = msgspec.json.Decoder(Combined, strict=False).decode
class BinanceProtocol(HoldingProtocol):
    """Decodes the frames of one Binance connection plan into its trade streams.

    Trade ids are contiguous per symbol, so de-duplication across overlapping connections
    (make-before-break rotation) is a high-water mark, and a skipped id is a missed trade. A
    connection taking over is held until the old one closes (:class:`HoldingProtocol`), so the
    high-water mark never jumps past trades the old one has yet to deliver.
    """

    def __init__(self, streams: dict[str, TradeStream]) -> None:
        super().__init__()
        self.streams = streams

    def feed(self, payload: bytes, ts_recv: int) -> Sequence[Event]:
        """Take one frame.

        Args:
            payload: the frame's bytes.
            ts_recv: local receive time, ns.

        Returns:
            Nothing for trades (they land in their stream), :class:`RecoverTrades` when ids were
            skipped, or a control event: :class:`Ack`, :class:`VenueErrorReply`, :class:`ServerShutdown`.

        Raises:
            VenueProtocolError: kinds ``invalid_json``, ``unknown_event``, ``missing_field`` or
                ``unknown_stream``.
        """
        # PERF: this runs for every frame; keep it to one decode, a lookup and two appends.
        try:
            msg = _decode_combined(payload)
        except msgspec.DecodeError:
            return _decode_other(payload)
        d = msg.data
        st = self.streams.get(msg.stream)
        if st is None:
            if type(d) is Shutdown:
                return (ServerShutdown(d.E * NS_PER_MS),)
            raise VenueProtocolError("unknown_stream", msg.stream[:60])
        tid = d.id  # type: ignore[union-attr]
        last = st.last_id
        events: Sequence[Event] = NO_EVENTS
        if tid != last + 1:  # PERF: one comparison on the usual path
            if tid <= last:
                st.duplicates += 1
                return NO_EVENTS
            if last < 0:  # the first trade since start: a restart may have left a hole before it
                events = st.first_trade(tid, d.T * NS_PER_MS)  # type: ignore[union-attr]
            else:
                events = (st.skipped(last, tid, st.newest_ts(), d.T * NS_PER_MS),)  # type: ignore[union-attr]
        st.last_id = tid
        items = st.items
        if len(items) >= st.max_rows:
            st.note_drop(d.T * NS_PER_MS, tid)  # type: ignore[union-attr]
            return events
        items.append(d)
        st.ts_recv.append(ts_recv)
        return events


def _decode_other(payload: bytes) -> tuple[Event, ...]:
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise VenueProtocolError("invalid_json", str(exc)) from exc
    if not isinstance(obj, dict):
        raise VenueProtocolError("unknown_event", f"top-level {type(obj).__name__}")
    if "result" in obj and "id" in obj:
        return (Ack(obj["id"]),)
    if "code" in obj and "msg" in obj:
        return (VenueErrorReply(obj.get("code"), str(obj.get("msg")), obj.get("id")),)
    if isinstance(obj.get("error"), dict):
        err = obj["error"]
        return (VenueErrorReply(err.get("code"), str(err.get("msg")), obj.get("id")),)
    data = obj.get("data", obj)
    if not isinstance(data, dict):
        raise VenueProtocolError("unknown_event", "data is not an object")
    event = data.get("e")
    if event == "serverShutdown" and isinstance(data.get("E"), int):
        return (ServerShutdown(data["E"] * NS_PER_MS),)
    if "stream" not in obj:
        raise VenueProtocolError("unknown_event", "not a combined-stream frame")
    if event in ("trade", "aggTrade", "depthUpdate", "kline"):
        raise VenueProtocolError("missing_field", f"{event} frame lacks or mistypes a field")
    raise VenueProtocolError("unknown_event", f"event {str(event)[:40]!r}")


def stream_route(market: Market, stream: str) -> str:
    """Return the USD-M route path (``/market`` or ``/public``) of a stream; spot has none."""
    if market is Market.SPOT:
        return ""
    kind = stream.split("@", 1)[1] if "@" in stream else stream
    if kind.startswith(("depth", "bookTicker", "trade")):
        return "/public"
    return "/market"


class DepthUpdate(msgspec.Struct, tag_field="e", tag="depthUpdate", frozen=True, gc=False):
    """``<symbol>@depth@100ms``: the book changes of one interval. ``pu`` exists on USD-M only."""

    E: int  # event time, ms
    U: int  # first update id in the event
    u: int  # last update id in the event
    b: list[tuple[float, float]]  # bid levels (price, absolute quantity; 0 deletes)
    a: list[tuple[float, float]]  # ask levels
    pu: int = -1  # USD-M: u of the previous event


class KlineBar(msgspec.Struct, frozen=True, gc=False):
    """The bar inside a ``kline`` event. Fields we do not use (``T``, ``s``, ``i``, ``f``, ``L``, ``B``) are skipped."""

    t: int  # open time, ms
    open: float = msgspec.field(name="o")
    high: float = msgspec.field(name="h")
    low: float = msgspec.field(name="l")
    close: float = msgspec.field(name="c")
    volume: float = msgspec.field(name="v")
    quote: float = msgspec.field(name="q")
    trades: int = msgspec.field(name="n")
    buy_volume: float = msgspec.field(name="V")  # taker-buy base volume
    buy_quote: float = msgspec.field(name="Q")  # taker-buy quote volume
    closed: bool = msgspec.field(name="x")


class Kline(msgspec.Struct, tag_field="e", tag="kline", frozen=True, gc=False):
    """``<symbol>@kline_1m``: the current bar, pushed while open and once more when closed."""

    E: int
    k: KlineBar


class CombinedDepth(msgspec.Struct, frozen=True, gc=False):
    """The combined-stream wrapper of a depth connection."""

    stream: str
    data: DepthUpdate | Shutdown


class CombinedKline(msgspec.Struct, frozen=True, gc=False):
    """The combined-stream wrapper of a kline connection."""

    stream: str
    data: Kline | Shutdown


S = TypeVar("S")
_decode_depth = msgspec.json.Decoder(CombinedDepth, strict=False).decode
_decode_kline = msgspec.json.Decoder(CombinedKline, strict=False).decode


class _CombinedProtocol(ProtocolBase, Generic[S]):
    """Decodes combined-stream frames of one kind into the streams of one connection plan."""

    _decode: Callable[[bytes], Any]  # a msgspec decoder's bound ``decode`` (not a function: it does not bind)

    def __init__(self, streams: dict[str, S]) -> None:
        super().__init__()
        self.streams = streams

    def _take(self, st: S, data: Any, ts_recv: int) -> Action | None:
        raise NotImplementedError

    def feed(self, payload: bytes, ts_recv: int) -> Sequence[Event]:
        """Take one frame; see :class:`~wadm.venues.base.VenueProtocol`."""
        try:
            msg = self._decode(payload)
        except msgspec.DecodeError:
            return _decode_other(payload)
        d = msg.data
        if type(d) is Shutdown:
            return (ServerShutdown(d.E * NS_PER_MS),)
        st = self.streams.get(msg.stream)
        if st is None:
            raise VenueProtocolError("unknown_stream", msg.stream[:60])
        action = self._take(st, d, ts_recv)
        return NO_EVENTS if action is None else (action,)


class BinanceBookProtocol(_CombinedProtocol[BookStream], HoldingProtocol):
    """Decodes diff-depth frames into the book streams of one connection plan."""

    _decode = _decode_depth

    def _take(self, st: BookStream, d: DepthUpdate, ts_recv: int) -> Action | None:
        return st.on_diff(d.U, d.u, d.pu, d.b, d.a, d.E * NS_PER_MS, ts_recv)


class BinanceKlineProtocol(_CombinedProtocol[KlineStream]):
    """Decodes kline frames into the kline streams of one connection plan."""

    _decode = _decode_kline

    def _take(self, st: KlineStream, d: Kline, ts_recv: int) -> Action | None:
        st.bars += 1
        return st.on_bar(_kline_row(d.k, ts_recv), d.k.closed)


def _kline_row(k: KlineBar, ts_recv: int) -> KlineRow:
    return KlineRow(k.t * NS_PER_MS, ts_recv, k.open, k.high, k.low, k.close, k.volume, k.quote, k.trades, k.buy_volume,
                    k.buy_quote)


def _plan(
    market: Market,
    specs: list[StreamSpec],
    base_url: str,
    channel: str,
    protocol: Callable[[list[StreamSpec]], VenueProtocol],
) -> list[ConnectionPlan]:
    plans = []
    for i in range(0, len(specs), MAX_STREAMS_PER_CONNECTION):
        group = specs[i : i + MAX_STREAMS_PER_CONNECTION]
        route = stream_route(market, group[0].name)
        url = f"{base_url.rstrip('/')}{route}/stream?streams={'/'.join(s.name for s in group)}"
        plans.append(
            ConnectionPlan(
                venue=Venue.BINANCE,
                market=market,
                url=url,
                streams=tuple(group),
                protocol=protocol(group),
                max_lifetime=MAX_LIFETIME,
                label=f"binance/{market}/{channel}/{i // MAX_STREAMS_PER_CONNECTION}",
            )
        )
    return plans


def _check(market: Market) -> None:
    if market not in (Market.SPOT, Market.USDM):
        raise ValueError(f"Binance has no market {market}")


def plan_trade_connections(
    market: Market,
    symbols: tuple[str, ...],
    base_url: str,
    *,
    trade_stream: str = "aggTrade",
    max_rows: int = 500_000,
) -> list[ConnectionPlan]:
    """Plan the trade connections of one Binance market.

    Args:
        market: ``spot`` or ``usdm``.
        symbols: symbols as the venue writes them (upper case).
        base_url: the venue's WebSocket base URL, e.g. ``wss://stream.binance.com:9443``.
        trade_stream: ``aggTrade`` (default: contiguous ids and an exact REST backfill) or ``trade``.
        max_rows: bound of each stream's pending-trade buffer.

    Returns:
        One plan per group of at most :data:`MAX_STREAMS_PER_CONNECTION` streams.
    """
    _check(market)

    recover = agg_trade_backfill if trade_stream == "aggTrade" else None  # REST gives aggTrade ids only

    def protocol(group: list[StreamSpec]) -> VenueProtocol:
        return BinanceProtocol({
            s.name: TradeStream(Venue.BINANCE, market, s, trades_to_frame, max_rows=max_rows, recover=recover)
            for s in group
        })

    specs = [StreamSpec(f"{s.lower()}@{trade_stream}", "trades", s) for s in symbols]
    return _plan(market, specs, base_url, "trades", protocol)


def plan_book_connections(
    market: Market,
    symbols: tuple[str, ...],
    base_url: str,
    *,
    snapshot_depth: int = 100,
    book_depth: int = 1000,
    max_buffer: int = 2_000,
) -> list[ConnectionPlan]:
    """Plan the diff-depth connections of one Binance market (``@depth@100ms``; ``/public`` on USD-M).

    Args:
        snapshot_depth: levels per side in each stored snapshot.
        book_depth: levels per side of the REST snapshots that seed each book.
        max_buffer: diffs buffered per symbol while a REST snapshot is pending (at 10 diffs/s,
            200 s: longer than any snapshot should take; past it the oldest go and a newer
            snapshot is fetched).
    """
    _check(market)

    def protocol(group: list[StreamSpec]) -> VenueProtocol:
        return BinanceBookProtocol({
            s.name: BookStream(Venue.BINANCE, market, s,
                               BinanceBookSync(s.symbol, futures=market is Market.USDM, max_buffer=max_buffer),
                               snapshot_depth=snapshot_depth,
                               snapshot_request=snapshot_request(market, s.symbol, book_depth),
                               snapshot_limit=snapshot_limit(market, book_depth))
            for s in group
        })

    specs = [StreamSpec(f"{s.lower()}@depth@100ms", "book", s) for s in symbols]
    return _plan(market, specs, base_url, "book", protocol)


def plan_kline_connections(market: Market, symbols: tuple[str, ...], base_url: str) -> list[ConnectionPlan]:
    """Plan the 1-minute kline connections of one Binance market (``/market`` on USD-M)."""
    _check(market)

    def protocol(group: list[StreamSpec]) -> VenueProtocol:
        return BinanceKlineProtocol({
            s.name: KlineStream(Venue.BINANCE, market, s, request=partial(klines_request, market, s.symbol))
            for s in group
        })

    specs = [StreamSpec(f"{s.lower()}@kline_1m", "klines", s, KLINE_MIN_SILENCE) for s in symbols]
    return _plan(market, specs, base_url, "klines", protocol)
