"""Bybit v5 public streams, spot and linear: topics, subscriptions and trade decoding (sans-IO).

Bybit has no URL subscriptions: the client sends ``subscribe`` requests (at most 10 topics per
request on spot) and an application ``ping`` every 20 s. Acks differ between categories, so they
are matched on ``op`` and ``success``, never on ``ret_msg``. A refused topic (``handler not
found``) is reported for that topic alone; the others on the connection keep running.

``publicTrade`` frames carry arrays of up to 1024 trades with string ids (UUIDs on linear,
numeric strings on spot) that are neither contiguous nor ordered, so de-duplication across
overlapping connections keeps a bounded set of recent ids per stream, and a gap can only be
inferred from a disconnect window.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence
from functools import partial
from operator import attrgetter
from typing import Any, Generic, TypeVar

import msgspec
import orjson
import polars as pl

from wadm.book.sync import BybitBookSync
from wadm.errors import VenueProtocolError
from wadm.records import KlineRow, Market, Venue
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
    RecentIds,
    RecoverTrades,
    RestLimit,
    RestRequest,
    StreamSpec,
    TradeStream,
    VenueErrorReply,
    VenueProtocol,
)
from wadm.venues.streams import KLINE_MIN_SILENCE, BookStream, KlineStream

__all__ = [
    "BOOK_DEPTHS",
    "MAX_TOPICS_PER_REQUEST",
    "REST_LIMIT",
    "TRADING",
    "BybitBookProtocol",
    "BybitKlineProtocol",
    "BybitListing",
    "BybitProtocol",
    "InstrumentInfo",
    "RecentTradeBackfill",
    "decode_instruments",
    "decode_klines",
    "decode_recent_trades",
    "is_data",
    "klines_request",
    "plan_book_connections",
    "plan_kline_connections",
    "plan_trade_connections",
    "recent_trades_request",
    "resubscribe_frames",
    "subscribe_frames",
    "trades_to_frame",
]

BOOK_DEPTHS = (1, 50, 200, 1000)  # orderbook.{depth} levels offered on spot and linear (500 was retired)
MAX_TOPICS_PER_REQUEST = 10  # the spot limit; linear accepts more but gains nothing from it
MAX_TOPICS_PER_CONNECTION = 200
PING_INTERVAL = 20.0
_TOPIC_RE = re.compile(r"topic:([\w.]+)")


class Envelope(msgspec.Struct, frozen=True, gc=False):
    """Every Bybit public frame: a topic message or a control answer."""

    topic: str = ""  # e.g. "publicTrade.BTCUSDT"
    type: str = ""  # "snapshot" | "delta"
    ts: int = 0  # ms
    data: msgspec.Raw = msgspec.Raw(b"null")  # decoded per topic in a second pass
    op: str = ""  # control answers: "subscribe", "unsubscribe", "ping", "pong"
    success: bool | None = None
    ret_msg: str = ""
    req_id: str = ""


class Trade(msgspec.Struct, frozen=True, gc=False):
    """One ``publicTrade`` fill. Fields we do not use (``s``, ``L``, ``RPI``, ``seq``) are skipped."""

    T: int  # fill time, ms
    S: str  # taker side: "Buy" | "Sell"
    v: float  # size (a decimal string on the wire)
    p: float  # price (a decimal string on the wire)
    i: str  # trade id
    BT: bool = False  # block trade


_decode_envelope = msgspec.json.Decoder(Envelope).decode
_decode_trades = msgspec.json.Decoder(list[Trade], strict=False).decode
_RAW_SCHEMA = {
    "T": pl.Int64(),
    "ts_recv": pl.Int64(),
    "id": pl.String(),
    "p": pl.Float64(),
    "q": pl.Float64(),
    "S": pl.String(),
}
_get = {k: attrgetter(k) for k in ("T", "i", "p", "v", "S")}


def trades_to_frame(items: list[Any], ts_recv: list[int]) -> pl.DataFrame:
    """Turn decoded Bybit trades into the stored schema, dropping zero prices or sizes."""
    raw = pl.DataFrame(
        {
            "T": list(map(_get["T"], items)),
            "ts_recv": ts_recv,
            "id": list(map(_get["i"], items)),
            "p": list(map(_get["p"], items)),
            "q": list(map(_get["v"], items)),
            "S": list(map(_get["S"], items)),
        },
        schema=_RAW_SCHEMA,
    )
    return raw.select(
        ts_event=pl.col("T") * NS_PER_MS,
        ts_recv="ts_recv",
        id="id",
        price="p",
        qty="q",
        side=pl.when(pl.col("S") == "Buy").then(1).otherwise(-1).cast(pl.Int8),
    ).filter(pl.col("price") > 0, pl.col("qty") > 0)


class BookData(msgspec.Struct, frozen=True, gc=False):
    """``orderbook.{depth}.{symbol}`` data. ``seq`` (cross sequence) is skipped."""

    b: list[tuple[float, float]]
    a: list[tuple[float, float]]
    u: int


class Candle(msgspec.Struct, frozen=True, gc=False):
    """One candle of ``kline.{interval}.{symbol}`` (a frame may carry two: the closed and the new)."""

    start: int  # open time, ms
    open: float
    high: float
    low: float
    close: float
    volume: float
    turnover: float
    confirm: bool  # closed


S = TypeVar("S")
_decode_book = msgspec.json.Decoder(BookData, strict=False).decode
_decode_candles = msgspec.json.Decoder(list[Candle], strict=False).decode


def _topic_message(payload: bytes) -> Envelope:
    try:
        return _decode_envelope(payload)
    except msgspec.ValidationError as exc:
        raise VenueProtocolError("unknown_event", str(exc)) from exc
    except msgspec.DecodeError as exc:
        raise VenueProtocolError("invalid_json", str(exc)) from exc


def _data(decode: Any, msg: Envelope) -> Any:
    try:
        return decode(msg.data)
    except msgspec.DecodeError as exc:
        raise VenueProtocolError("missing_field", f"{msg.topic}: {exc}") from exc


class _TopicProtocol(ProtocolBase, Generic[S]):
    """Decodes topic frames of one kind into the streams of one connection plan."""

    def __init__(self, streams: dict[str, S]) -> None:
        super().__init__()
        self.streams = streams

    def _take(self, st: S, msg: Envelope, ts_recv: int) -> Action | None:
        raise NotImplementedError

    def feed(self, payload: bytes, ts_recv: int) -> Sequence[Event]:
        """Take one frame; see :class:`~wadm.venues.base.VenueProtocol`."""
        msg = _topic_message(payload)
        if not msg.topic:
            return _control(msg)
        st = self.streams.get(msg.topic)
        if st is None:
            raise VenueProtocolError("unknown_stream", msg.topic[:60])
        action = self._take(st, msg, ts_recv)
        return NO_EVENTS if action is None else (action,)


class BybitProtocol(_TopicProtocol[TradeStream]):
    """Decodes the ``publicTrade`` frames of one Bybit connection plan into its trade streams."""

    def _take(self, st: TradeStream, msg: Envelope, ts_recv: int) -> Action | None:
        try:
            trades = _decode_trades(msg.data)
        except msgspec.DecodeError as exc:
            raise VenueProtocolError("missing_field", f"{msg.topic}: {exc}") from exc
        st.frames += 1
        if not trades:
            return None
        action = None
        first_ts = trades[0].T * NS_PER_MS
        if st.first_live is None:
            st.first_live = first_ts
        if st.gap_open:
            # The connection was lost (or WADM restarted): trades between our newest one and
            # this frame may be missing, and Bybit ids cannot tell; recent-trade may recover them.
            st.gap_open = False
            if 0 < st.newest_ts() < first_ts:
                action = RecoverTrades(msg.topic, Gap(st.newest_ts(), first_ts, st.gap_reason))
        recent = st.recent
        assert recent is not None
        items = st.items
        for trade in trades:
            if not recent.add(trade.i):
                st.duplicates += 1
            elif len(items) >= st.max_rows:
                st.note_drop(trade.T * NS_PER_MS, None)
            else:
                items.append(trade)
                st.ts_recv.append(ts_recv)
        return action


class BybitBookProtocol(_TopicProtocol[BookStream], HoldingProtocol):
    """Decodes ``orderbook`` snapshots and deltas into the book streams of one connection plan.

    A broken book (a ``u`` gap or a crossed book) asks for a resubscription of its topic on the
    same connection (at most once a second): Bybit sends a fresh snapshot on subscribe.
    """

    def _take(self, st: BookStream, msg: Envelope, ts_recv: int) -> Action | None:
        d = _data(_decode_book, msg)
        return st.on_message(msg.type == "snapshot", d.u, d.b, d.a, msg.ts * NS_PER_MS, ts_recv)


def resubscribe_frames(topic: str) -> tuple[bytes, ...]:
    """Frames that make Bybit send a fresh snapshot of a topic: unsubscribe, then subscribe."""
    return subscribe_frames([topic], "unsubscribe") + subscribe_frames([topic])


class BybitKlineProtocol(_TopicProtocol[KlineStream]):
    """Decodes ``kline`` frames into the kline streams of one connection plan."""

    def _take(self, st: KlineStream, msg: Envelope, ts_recv: int) -> Action | None:
        st.bars += 1
        missed = None
        for c in _data(_decode_candles, msg):  # a frame may close one bar and open the next
            missed = st.on_bar(_kline_row(c, ts_recv), c.confirm) or missed
        return missed


def _kline_row(c: Candle, ts_recv: int) -> KlineRow:
    return KlineRow(c.start * NS_PER_MS, ts_recv, c.open, c.high, c.low, c.close, c.volume, c.turnover, None, None,
                    None)


# -- REST: budget, requests and answers (PROTOCOLS.md §3.6) -------------------------------------

REST_LIMIT = RestLimit(600, 5.0)  # requests per 5 s per IP; spot and linear share the host
TRADING = "Trading"  # the listing status of a symbol that trades


class _RestResult(msgspec.Struct, frozen=True, gc=False):
    list: msgspec.Raw = msgspec.Raw(b"null")  # absent from error answers (``"result": {}``)


class _RestAnswer(msgspec.Struct, frozen=True, gc=False):
    retCode: int
    retMsg: str = ""
    result: _RestResult | None = None


class RestTrade(msgspec.Struct, frozen=True, gc=False):
    """One row of ``GET /v5/market/recent-trade`` (it fits :func:`trades_to_frame`)."""

    T: int = msgspec.field(name="time")
    S: str = msgspec.field(name="side")
    v: float = msgspec.field(name="size")
    p: float = msgspec.field(name="price")
    i: str = msgspec.field(name="execId")


class _PriceFilter(msgspec.Struct, frozen=True, gc=False):
    tickSize: str = ""


class _LotSizeFilter(msgspec.Struct, frozen=True, gc=False):
    qtyStep: str = ""  # linear
    basePrecision: str = ""  # spot


class InstrumentInfo(msgspec.Struct, frozen=True, gc=False):
    """One row of ``GET /v5/market/instruments-info`` (the fields we use)."""

    symbol: str
    status: str = ""
    priceFilter: _PriceFilter = _PriceFilter()
    lotSizeFilter: _LotSizeFilter = _LotSizeFilter()

    def instrument(self) -> Instrument | None:
        """The symbol's tick and lot (linear: ``qtyStep``; spot: ``basePrecision``)."""
        lot = self.lotSizeFilter.qtyStep or self.lotSizeFilter.basePrecision
        return Instrument.parse(self.priceFilter.tickSize, lot)


_decode_answer = msgspec.json.Decoder(_RestAnswer).decode
_decode_rest_trades = msgspec.json.Decoder(list[RestTrade], strict=False).decode
_decode_rest_klines = msgspec.json.Decoder(list[tuple[int, float, float, float, float, float, float]],
                                           strict=False).decode
_decode_instruments = msgspec.json.Decoder(list[InstrumentInfo]).decode


def _result_list(payload: bytes, decode: Any, what: str) -> Any:
    try:
        answer = _decode_answer(payload)
        if answer.retCode != 0 or answer.result is None or bytes(answer.result.list) == b"null":
            raise VenueProtocolError("venue_error", f"{what}: retCode {answer.retCode}: {answer.retMsg[:200]}")
        return decode(answer.result.list)
    except msgspec.DecodeError as exc:
        raise VenueProtocolError("invalid_rest_answer", f"{what}: {exc}") from exc


def decode_recent_trades(payload: bytes) -> list[RestTrade]:
    """Decode ``recent-trade`` (newest first on the wire), oldest first.

    Raises:
        VenueProtocolError: kinds ``venue_error`` or ``invalid_rest_answer``.
    """
    trades: list[RestTrade] = _result_list(payload, _decode_rest_trades, "recent-trade")
    return sorted(reversed(trades), key=lambda t: t.T)  # stable: fills of one millisecond keep their order


def decode_klines(payload: bytes, ts_recv: int = 0) -> list[KlineRow]:
    """Decode ``kline`` (newest first on the wire) into stored rows, oldest first; the newest may be open."""
    rows = _result_list(payload, _decode_rest_klines, "kline")
    out = [KlineRow(r[0] * NS_PER_MS, ts_recv, r[1], r[2], r[3], r[4], r[5], r[6], None, None, None) for r in rows]
    return sorted(out)


def decode_instruments(payload: bytes) -> list[InstrumentInfo]:
    """Decode ``instruments-info``."""
    return _result_list(payload, _decode_instruments, "instruments-info")  # type: ignore[no-any-return]


def recent_trades_request(market: Market, symbol: str) -> RestRequest[list[RestTrade]]:
    """The newest trades the venue keeps: 60 on spot, 1000 on linear (no cursor)."""
    limit = 60 if market is Market.SPOT else 1000
    return RestRequest("/v5/market/recent-trade", {"category": market.value, "symbol": symbol, "limit": limit}, 1,
                       decode_recent_trades)


def klines_request(market: Market, symbol: str, first: int, last: int) -> RestRequest[list[KlineRow]]:
    """1-minute bars with open times in ``[first, last]`` (ms), at most 1000."""
    params: dict[str, str | int] = {"category": market.value, "symbol": symbol, "interval": "1", "start": first,
                                    "end": last, "limit": 1000}
    return RestRequest("/v5/market/kline", params, 1, decode_klines)


class RecentTradeBackfill:
    """Recover a disconnect window from ``recent-trade`` (best effort: Bybit has no cursor).

    The answer covers the window only when its oldest trade is older than the window's start;
    otherwise the part before the oldest trade stays a gap. Trades the stream (or the store,
    before a restart) already delivered are skipped by id.
    """

    def __init__(self, stream: TradeStream, gap: Gap) -> None:
        self.stream = stream
        self.left: Gap | None = gap
        self._asked = False

    def next_request(self) -> RestRequest[list[RestTrade]] | None:
        """One request, once."""
        if self._asked or self.left is None:
            return None
        self._asked = True
        return recent_trades_request(self.stream.market, self.stream.spec.symbol)

    def on_answer(self, value: Any, ts_recv: int) -> pl.DataFrame | None:
        """Keep the undelivered trades inside the window; what the answer does not reach stays missing."""
        gap = self.left
        assert gap is not None
        rows: list[RestTrade] = value
        new = self.stream.accept_backfill(rows, gap.start, gap.end)
        oldest = rows[0].T * NS_PER_MS if rows else gap.end
        self.left = None if oldest <= gap.start else gap._replace(end=min(gap.end, oldest))
        if not new:
            return None
        frame = trades_to_frame(new, [ts_recv] * len(new))
        self.stream.backfilled += frame.height
        return frame

    def missing(self) -> list[Gap]:
        """The part of the window the venue's recent trades did not reach back over."""
        return [self.left] if self.left is not None else []


def _recent_trade_backfill(stream: TradeStream, gap: Gap) -> RecentTradeBackfill | None:
    return RecentTradeBackfill(stream, gap) if gap.reason in ("disconnected", "restart") else None


class BybitListing:
    """Which symbols Bybit lists and trades: one ``instruments-info`` request per symbol.

    The full list is paginated, so each symbol is asked for by name; a symbol the venue could
    not be asked about is left out of :attr:`statuses`.
    """

    trading = TRADING

    def __init__(self, market: Market, symbols: Sequence[str]) -> None:
        self.market = market
        self.statuses: dict[str, str] = {}
        self.instruments: dict[str, Instrument] = {}
        self.weight_limit: int | None = None  # Bybit publishes none: its budget is fixed
        self._queue = sorted(symbols)
        self._asked = ""

    def next_request(self) -> RestRequest[list[InstrumentInfo]] | None:
        """The next symbol's request, or None when done."""
        if not self._queue:
            return None
        self._asked = self._queue.pop(0)
        return RestRequest("/v5/market/instruments-info", {"category": self.market.value, "symbol": self._asked},
                           1, decode_instruments)

    def on_answer(self, value: Any) -> None:
        """Note the asked symbol's status (not listed when the list does not hold it)."""
        listed = [x for x in value if x.symbol == self._asked]
        self.statuses[self._asked] = listed[0].status if listed else NOT_LISTED
        if listed and (instrument := listed[0].instrument()) is not None:
            self.instruments[self._asked] = instrument

    def on_error(self, status: int | None) -> None:
        """Leave the symbol out: nothing is assumed about it."""


def _control(msg: Envelope) -> tuple[Event, ...]:
    if msg.op == "ping" or msg.op == "pong" or msg.ret_msg == "pong":
        return NO_EVENTS
    if msg.op in ("subscribe", "unsubscribe") and msg.success is not None:
        if msg.success:
            return (Ack(msg.req_id or None),)
        found = _TOPIC_RE.search(msg.ret_msg)
        return (VenueErrorReply(None, msg.ret_msg, msg.req_id or None, found.group(1) if found else None),)
    if msg.op:
        return NO_EVENTS  # other control answers carry nothing for us
    raise VenueProtocolError("unknown_event", "a frame with neither topic nor op")


def is_data(payload: bytes) -> bool:
    """True for a topic frame (market data); subscription answers and pongs carry no ``"topic"`` key."""
    return b'"topic":' in payload


def subscribe_frames(topics: list[str], op: str = "subscribe") -> tuple[bytes, ...]:
    """Requests for ``topics``, at most :data:`MAX_TOPICS_PER_REQUEST` per request."""
    counter = itertools.count(1)
    return tuple(
        orjson.dumps({"req_id": f"{op}-{next(counter)}", "op": op, "args": topics[i : i + MAX_TOPICS_PER_REQUEST]})
        for i in range(0, len(topics), MAX_TOPICS_PER_REQUEST)
    )


def _plan(
    market: Market,
    specs: list[StreamSpec],
    base_url: str,
    channel: str,
    protocol: Callable[[list[StreamSpec]], VenueProtocol],
) -> list[ConnectionPlan]:
    if market not in (Market.SPOT, Market.LINEAR):
        raise ValueError(f"Bybit has no market {market}")
    plans = []
    for i in range(0, len(specs), MAX_TOPICS_PER_CONNECTION):
        group = specs[i : i + MAX_TOPICS_PER_CONNECTION]
        plans.append(
            ConnectionPlan(
                venue=Venue.BYBIT,
                market=market,
                url=f"{base_url.rstrip('/')}/v5/public/{market.value}",
                streams=tuple(group),
                protocol=protocol(group),
                subscribe_frames=subscribe_frames([s.name for s in group]),
                app_ping=b'{"req_id":"ping","op":"ping"}',
                app_ping_interval=PING_INTERVAL,
                is_data=is_data,
                label=f"bybit/{market}/{channel}/{i // MAX_TOPICS_PER_CONNECTION}",
            )
        )
    return plans


def plan_trade_connections(
    market: Market, symbols: tuple[str, ...], base_url: str, *, max_rows: int = 500_000
) -> list[ConnectionPlan]:
    """Plan the trade connections of one Bybit category (``spot`` or ``linear``).

    Args:
        market: ``spot`` or ``linear``.
        symbols: symbols as the venue writes them.
        base_url: WebSocket base URL, e.g. ``wss://stream.bybit.com``; ``/v5/public/<category>`` is appended.
        max_rows: bound of each stream's pending-trade buffer.
    """

    def protocol(group: list[StreamSpec]) -> VenueProtocol:
        return BybitProtocol({
            s.name: TradeStream(Venue.BYBIT, market, s, trades_to_frame, max_rows=max_rows, recent=RecentIds(),
                                recover=_recent_trade_backfill)
            for s in group
        })

    return _plan(market, [StreamSpec(f"publicTrade.{s}", "trades", s) for s in symbols], base_url, "trades",
                 protocol)


def plan_book_connections(
    market: Market, symbols: tuple[str, ...], base_url: str, *, depth: int = 200, snapshot_depth: int = 100
) -> list[ConnectionPlan]:
    """Plan the ``orderbook.{depth}`` connections of one Bybit category.

    Args:
        depth: one of :data:`BOOK_DEPTHS`.
        snapshot_depth: levels per side in each stored snapshot.
    """
    if depth not in BOOK_DEPTHS:
        raise ValueError(f"Bybit has no orderbook.{depth}; use one of {BOOK_DEPTHS}")

    def protocol(group: list[StreamSpec]) -> VenueProtocol:
        return BybitBookProtocol({
            s.name: BookStream(Venue.BYBIT, market, s, BybitBookSync(s.symbol), snapshot_depth=snapshot_depth,
                               resubscribe_frames=resubscribe_frames(s.name))
            for s in group
        })

    specs = [StreamSpec(f"orderbook.{depth}.{s}", "book", s) for s in symbols]
    return _plan(market, specs, base_url, "book", protocol)


def plan_kline_connections(market: Market, symbols: tuple[str, ...], base_url: str) -> list[ConnectionPlan]:
    """Plan the 1-minute kline connections of one Bybit category (``kline.1.{symbol}``)."""

    def protocol(group: list[StreamSpec]) -> VenueProtocol:
        return BybitKlineProtocol({
            s.name: KlineStream(Venue.BYBIT, market, s, request=partial(klines_request, market, s.symbol))
            for s in group
        })

    specs = [StreamSpec(f"kline.1.{s}", "klines", s, KLINE_MIN_SILENCE) for s in symbols]
    return _plan(market, specs, base_url, "klines", protocol)
