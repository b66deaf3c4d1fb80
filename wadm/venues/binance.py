"""Binance spot and USD-M: stream names, routes and trade decoding (sans-IO).

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
from operator import attrgetter
from typing import Any, Generic, TypeVar

import msgspec
import orjson
import polars as pl

from wadm.book.sync import BinanceBookSync
from wadm.errors import VenueProtocolError
from wadm.records import USDM_DEPTH_LIMITS, KlineRow, Market, Venue
from wadm.units import NS_PER_MS
from wadm.venues.base import (
    NO_EVENTS,
    NOT_LISTED,
    Ack,
    Action,
    ConnectionPlan,
    Event,
    Gap,
    HoldingProtocol,
    Instrument,
    ProtocolBase,
    RestLimit,
    RestRequest,
    ServerShutdown,
    StreamSpec,
    TradeStream,
    VenueErrorReply,
    VenueProtocol,
)
from wadm.venues.streams import KLINE_MIN_SILENCE, BookStream, DepthSnapshot, KlineStream

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
_RAW_SCHEMA = {
    "T": pl.Int64(),
    "ts_recv": pl.Int64(),
    "id": pl.Int64(),
    "p": pl.Float64(),
    "q": pl.Float64(),
    "m": pl.Boolean(),
}
_get_t, _get_id, _get_p, _get_q, _get_m = (attrgetter(a) for a in ("T", "id", "p", "q", "m"))


def trades_to_frame(items: list[Any], ts_recv: list[int]) -> pl.DataFrame:
    """Turn decoded Binance trades (:class:`Trade` or :class:`AggTrade`) into the stored schema.

    Rows with a zero price or quantity (USD-M emits such frames for spent trade ids) are dropped
    here, per column, rather than checked per message; :class:`TradeStream` counts them.
    """
    raw = pl.DataFrame(
        {
            "T": list(map(_get_t, items)),
            "ts_recv": ts_recv,
            "id": list(map(_get_id, items)),
            "p": list(map(_get_p, items)),
            "q": list(map(_get_q, items)),
            "m": list(map(_get_m, items)),
        },
        schema=_RAW_SCHEMA,
    )
    return raw.select(
        ts_event=pl.col("T") * NS_PER_MS,
        ts_recv="ts_recv",
        id="id",
        price="p",
        qty="q",
        side=pl.when(pl.col("m")).then(-1).otherwise(1).cast(pl.Int8),
    ).filter(pl.col("price") > 0, pl.col("qty") > 0)


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


# -- REST: budgets, requests and answers (PROTOCOLS.md §1.5, §2.5) ------------------------------

# Request weight per minute per IP, until exchangeInfo says otherwise.
REST_LIMITS = {Market.SPOT: RestLimit(6000, 60.0), Market.USDM: RestLimit(2400, 60.0)}
TRADING = "TRADING"  # the listing status of a symbol that trades


class RestDepth(msgspec.Struct, frozen=True, gc=False):
    """``GET /api/v3/depth`` and ``/fapi/v1/depth``."""

    lastUpdateId: int
    bids: list[tuple[float, float]]
    asks: list[tuple[float, float]]


class RestAggTrade(msgspec.Struct, frozen=True, gc=False):
    """One row of ``GET /api/v3/aggTrades`` (the stream's fields without the event wrapper)."""

    id: int = msgspec.field(name="a")
    p: float
    q: float
    T: int
    m: bool


class RateLimit(msgspec.Struct, frozen=True, gc=False):
    """One entry of ``exchangeInfo.rateLimits``."""

    rateLimitType: str = ""
    interval: str = ""
    intervalNum: int = 0
    limit: int = 0


class SymbolFilter(msgspec.Struct, frozen=True, gc=False):
    """One of a symbol's ``filters`` (``PRICE_FILTER`` carries the tick, ``LOT_SIZE`` the lot)."""

    filterType: str = ""
    tickSize: str = ""
    stepSize: str = ""


class SymbolStatus(msgspec.Struct, frozen=True, gc=False):
    """One entry of ``exchangeInfo.symbols`` (the fields we use)."""

    symbol: str
    status: str = ""
    filters: list[SymbolFilter] = []

    def instrument(self) -> Instrument | None:
        """The symbol's tick and lot, when both filters are given."""
        kinds = {f.filterType: f for f in self.filters}
        price, lot = kinds.get("PRICE_FILTER"), kinds.get("LOT_SIZE")
        return None if price is None or lot is None else Instrument.parse(price.tickSize, lot.stepSize)


class ExchangeInfo(msgspec.Struct, frozen=True, gc=False):
    """``GET /api/v3/exchangeInfo`` and ``/fapi/v1/exchangeInfo`` (the fields we use)."""

    rateLimits: list[RateLimit] = []
    symbols: list[SymbolStatus] = []


RestKline = tuple[int, float, float, float, float, float, int, float, int, float, float, Any]
_decode_rest_depth = msgspec.json.Decoder(RestDepth, strict=False).decode
_decode_rest_trades = msgspec.json.Decoder(list[RestAggTrade], strict=False).decode
_decode_rest_klines = msgspec.json.Decoder(list[RestKline], strict=False).decode
_decode_exchange_info = msgspec.json.Decoder(ExchangeInfo).decode


def _rest(decode: Any, payload: bytes, what: str) -> Any:
    try:
        return decode(payload)
    except msgspec.DecodeError as exc:
        raise VenueProtocolError("invalid_rest_answer", f"{what}: {exc}") from exc


def decode_snapshot(payload: bytes) -> RestDepth:
    """Decode a REST depth snapshot.

    Raises:
        VenueProtocolError: kind ``invalid_rest_answer``.
    """
    return _rest(_decode_rest_depth, payload, "depth")  # type: ignore[no-any-return]


def _decode_depth_snapshot(payload: bytes) -> DepthSnapshot:
    snap = decode_snapshot(payload)
    return DepthSnapshot(snap.lastUpdateId, snap.bids, snap.asks)


def decode_agg_trades(payload: bytes) -> list[RestAggTrade]:
    """Decode REST aggTrades (they fit :func:`trades_to_frame`)."""
    return _rest(_decode_rest_trades, payload, "aggTrades")  # type: ignore[no-any-return]


def decode_klines(payload: bytes, ts_recv: int = 0) -> list[KlineRow]:
    """Decode REST klines into stored rows (the newest may still be open: callers filter)."""
    rows = _rest(_decode_rest_klines, payload, "klines")
    return [KlineRow(r[0] * NS_PER_MS, ts_recv, r[1], r[2], r[3], r[4], r[5], r[7], r[8], r[9], r[10]) for r in rows]


def decode_exchange_info(payload: bytes) -> ExchangeInfo:
    """Decode ``exchangeInfo`` (symbols and their status, request-weight limits)."""
    return _rest(_decode_exchange_info, payload, "exchangeInfo")  # type: ignore[no-any-return]


def snapshot_limit(market: Market, depth: int) -> int:
    """The snapshot ``limit`` to ask for: spot takes 1-5000; USD-M only the values it lists."""
    if market is Market.SPOT:
        return max(1, min(depth, 5000))
    return max((v for v in USDM_DEPTH_LIMITS if v <= depth), default=USDM_DEPTH_LIMITS[0])


def snapshot_weight(market: Market, limit: int) -> int:
    """Request weight of a depth snapshot of ``limit`` levels (PROTOCOLS.md §1.5, §2.5)."""
    if market is Market.SPOT:
        return 5 if limit <= 100 else 25 if limit <= 500 else 50 if limit <= 1000 else 250
    return 2 if limit < 100 else 5 if limit < 500 else 10 if limit < 1000 else 20


def _path(market: Market, name: str) -> str:
    return f"/api/v3/{name}" if market is Market.SPOT else f"/fapi/v1/{name}"


def snapshot_request(market: Market, symbol: str, depth: int) -> RestRequest[DepthSnapshot]:
    """The depth snapshot that seeds a book of ``depth`` levels (rounded to a limit the venue accepts)."""
    limit = snapshot_limit(market, depth)
    return RestRequest(_path(market, "depth"), {"symbol": symbol, "limit": limit}, snapshot_weight(market, limit),
                       _decode_depth_snapshot)


def agg_trades_request(market: Market, symbol: str, from_id: int) -> RestRequest[list[RestAggTrade]]:
    """Up to 1000 aggregate trades from ``from_id`` on."""
    return RestRequest(_path(market, "aggTrades"), {"symbol": symbol, "fromId": from_id, "limit": 1000},
                       4 if market is Market.SPOT else 20, decode_agg_trades)


def klines_request(market: Market, symbol: str, first: int, last: int) -> RestRequest[list[KlineRow]]:
    """1-minute bars with open times in ``[first, last]`` (ms), at most 1000."""
    params: dict[str, str | int] = {"symbol": symbol, "interval": "1m", "startTime": first, "endTime": last,
                                    "limit": 1000}
    return RestRequest(_path(market, "klines"), params, 2 if market is Market.SPOT else 5, decode_klines)


class AggTradeBackfill:
    """Recover skipped aggTrade ids over REST, from the first missing id to the last, in order.

    Ids are contiguous, so the recovery is exact: ids the venue itself skipped become holes of
    their own, and ids older than the venue keeps stay missing.
    """

    def __init__(self, stream: TradeStream, gap: Gap) -> None:
        assert gap.first_id is not None and gap.last_id is not None
        self.stream = stream
        self.left: Gap | None = gap
        self.holes: list[Gap] = []
        self.last_id = gap.last_id
        self.next_id = gap.first_id

    def next_request(self) -> RestRequest[list[RestAggTrade]] | None:
        """The next page from the first id still missing, or None when done."""
        if self.left is None:
            return None
        return agg_trades_request(self.stream.market, self.stream.spec.symbol, self.next_id)

    def on_answer(self, value: Any, ts_recv: int) -> pl.DataFrame | None:
        """Keep the page's trades inside the gap; the rest of the gap is what is left."""
        gap, next_id, last_id = self.left, self.next_id, self.last_id
        assert gap is not None
        rows = [r for r in value if next_id <= r.id <= last_id]
        if not rows:
            self.holes.append(gap)  # the venue has nothing more (ids older than it keeps)
            self.left = None
            return None
        start = gap.start
        for r in rows:  # ids the venue skipped cannot be recovered: each hole is a gap of its own
            if r.id > next_id:
                self.holes.append(Gap(start, r.T * NS_PER_MS, "missing_ids", r.id - next_id, next_id, r.id - 1))
            next_id, start = r.id + 1, r.T * NS_PER_MS
        self.next_id = next_id
        self.left = (gap._replace(start=start, missing=last_id - next_id + 1, first_id=next_id)
                     if next_id <= last_id else None)
        frame = trades_to_frame(rows, [ts_recv] * len(rows))
        self.stream.backfilled += frame.height
        return frame

    def missing(self) -> list[Gap]:
        """Holes the venue skipped, and what was not recovered."""
        return [*self.holes, *([self.left] if self.left is not None else [])]


def _agg_trade_backfill(stream: TradeStream, gap: Gap) -> AggTradeBackfill | None:
    return AggTradeBackfill(stream, gap) if gap.first_id is not None and gap.last_id is not None else None


class BinanceListing:
    """Which symbols Binance lists and trades (``exchangeInfo``), and its request-weight limit.

    Spot answers for just the symbols asked for and refuses the whole list (400) if one is
    unknown: the list is then asked for symbol by symbol. USD-M answers for every symbol it lists.
    """

    trading = TRADING

    def __init__(self, market: Market, symbols: Sequence[str]) -> None:
        self.market = market
        self.statuses: dict[str, str] = {}
        self.instruments: dict[str, Instrument] = {}
        self.weight_limit: int | None = None
        self._queue: list[list[str]] = [sorted(symbols)] if symbols else []
        self._asked: list[str] = []

    def next_request(self) -> RestRequest[ExchangeInfo] | None:
        """The next ``exchangeInfo`` request, or None when every symbol has an answer."""
        if not self._queue:
            return None
        self._asked = self._queue.pop(0)
        if self.market is Market.SPOT:
            return RestRequest("/api/v3/exchangeInfo", {"symbols": orjson.dumps(self._asked).decode()}, 20,
                               decode_exchange_info)
        return RestRequest("/fapi/v1/exchangeInfo", {}, 1, decode_exchange_info)

    def on_answer(self, value: Any) -> None:
        """Note each asked symbol's status and the published weight limit."""
        info: ExchangeInfo = value
        for rule in info.rateLimits:
            if (rule.rateLimitType == "REQUEST_WEIGHT" and rule.interval == "MINUTE" and rule.intervalNum == 1
                    and rule.limit > 0):
                self.weight_limit = rule.limit
        listed = {x.symbol: x for x in info.symbols}
        for symbol in self._asked:
            found = listed.get(symbol)
            self.statuses[symbol] = NOT_LISTED if found is None else found.status
            if found is not None and (instrument := found.instrument()) is not None:
                self.instruments[symbol] = instrument

    def on_error(self, status: int | None) -> None:
        """Spot's 400 names an unknown symbol: split the list, or mark the one symbol; otherwise stop."""
        if status == 400 and self.market is not Market.SPOT:
            self._queue.clear()  # USD-M's request names no symbol: asking again changes nothing
        elif status == 400 and len(self._asked) > 1:
            self._queue[:0] = [[symbol] for symbol in self._asked]
        elif status == 400:
            self.statuses.update(dict.fromkeys(self._asked, NOT_LISTED))
        else:
            self._queue.clear()  # the venue cannot be asked now: assume nothing


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

    recover = _agg_trade_backfill if trade_stream == "aggTrade" else None  # REST gives aggTrade ids only

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
