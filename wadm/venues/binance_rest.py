"""Binance spot and USD-M REST (sans-IO): request specs, answers, backfill and listing queries.

Every REST path, weight and budget of Binance lives here (PROTOCOLS.md §1.5, §2.5): the depth
snapshot that seeds a book, ``aggTrades`` by id for a skipped-id backfill, 1-minute ``klines``,
and ``exchangeInfo`` for listings, rate limits and each symbol's tick and lot. Also the batch
builder (:func:`trades_to_frame`) that stream and REST trades share.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter
from typing import Any

import msgspec
import orjson
import polars as pl

from wadm.errors import VenueProtocolError
from wadm.records import USDM_DEPTH_LIMITS, KlineRow, Market
from wadm.units import NS_PER_MS
from wadm.venues.base import NOT_LISTED, Gap, Instrument, RestLimit, RestRequest, TradeStream
from wadm.venues.streams import DepthSnapshot

__all__ = [
    "REST_LIMITS",
    "TRADING",
    "AggTradeBackfill",
    "BinanceListing",
    "ExchangeInfo",
    "RestAggTrade",
    "RestDepth",
    "agg_trades_request",
    "agg_trade_backfill",
    "decode_agg_trades",
    "decode_exchange_info",
    "decode_klines",
    "decode_snapshot",
    "klines_request",
    "snapshot_limit",
    "snapshot_request",
    "snapshot_weight",
    "trades_to_frame",
]

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


def agg_trade_backfill(stream: TradeStream, gap: Gap) -> AggTradeBackfill | None:
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
