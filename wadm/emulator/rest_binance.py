"""Binance spot (``/api/v3``) and USD-M (``/fapi/v1``) REST market data (PROTOCOLS.md §1.5, §2.5).

Endpoints: ``depth``, ``aggTrades``, ``klines``, ``exchangeInfo``, ``ping``,
``time``. Bodies are bare JSON like the venue's; errors are
``{"code":..,"msg":..}`` with status 400 (``-1121 Invalid symbol.`` ...). Every
request is charged its documented weight (see `weight`) before it is served.

``aggTrades`` reads the feed's history (ids contiguous, including trades that
were never delivered); ``depth`` and ``klines`` read the feed's market model,
attaching one if needed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from wadm.emulator.binance_streams import format_levels
from wadm.emulator.book import ASK, BID
from wadm.emulator.klines import BINANCE_INTERVALS, bar_text
from wadm.emulator.market import SyntheticFeed, format_decimal
from wadm.emulator.rest import JSON_HEADERS, BadParam, HttpResponse, Params, RestFault

if TYPE_CHECKING:
    from wadm.emulator.server import Emulator

__all__ = ["respond", "weight"]

VENUE = "binance"
USDM_DEPTH_LIMITS = (5, 10, 20, 50, 100, 500, 1000)
_QUOTES = ("USDT", "USDC", "FDUSD", "BUSD", "TUSD", "BTC", "ETH", "BNB", "EUR", "TRY")


class ApiError(Exception):
    """A Binance error answer."""

    def __init__(self, code: int, msg: str, status: int = 400) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.status = status


def weight(market: str, endpoint: str, params: Params) -> int:
    """The documented request weight of an endpoint call.

    Spot depth 5/25/50/250 by limit, USD-M depth 2/5/10/20; aggTrades 4 (spot)
    or 20 (USD-M); klines 2 (spot) or 1/2/5/10 by limit (USD-M); exchangeInfo
    20 (spot) or 1 (USD-M); others 1.
    """
    spot = market == "spot"
    try:
        limit = params.integer("limit")
    except BadParam:
        limit = None
    if endpoint == "depth":
        n = limit if limit is not None else (100 if spot else 500)
        if spot:
            return 5 if n <= 100 else 25 if n <= 500 else 50 if n <= 1000 else 250
        return 2 if n <= 50 else 5 if n <= 100 else 10 if n <= 500 else 20
    if endpoint == "aggTrades":
        return 4 if spot else 20
    if endpoint == "klines":
        if spot:
            return 2
        n = limit if limit is not None else 500
        return 1 if n < 100 else 2 if n < 500 else 5 if n <= 1000 else 10
    if endpoint == "exchangeInfo":
        return 20 if spot else 1
    return 1


def respond(emu: Emulator, market: str, endpoint: str, params: Params) -> HttpResponse:
    """Answer one Binance REST request (after faults and weight accounting).

    Args:
        emu: The emulator.
        market: ``spot`` or ``usdm``.
        endpoint: Path after ``/api/v3/`` or ``/fapi/v1/``.
        params: Query parameters.
    """
    symbol = params.text("symbol")
    forced = emu.rest_faults.take("status", VENUE, market, symbol)
    if forced is not None:
        return _status(emu, market, int(forced.value), forced.retry_after)
    handler = _ENDPOINTS.get(endpoint)
    if handler is None:
        return HttpResponse(404, b'{"code":-1000,"msg":"Unknown endpoint."}')
    limiter = emu.limiters[market]
    status, retry = limiter.charge(weight(market, endpoint, params))
    if status is not None:
        resp = _status(emu, market, status, retry)
    else:
        try:
            resp = handler(emu, market, params)
        except BadParam as exc:
            resp = _error(_bad_param(exc))
        except ApiError as exc:
            resp = _error(exc)
    resp.headers["X-MBX-USED-WEIGHT-1M"] = str(limiter.used)
    return resp


# ------------------------------------------------------------------ endpoints


def _depth(emu: Emulator, market: str, params: Params) -> HttpResponse:
    feed = _feed(emu, market, params)
    spot = market == "spot"
    limit = params.integer("limit", 100 if spot else 500)
    assert limit is not None
    if spot:
        if limit < 1:
            raise ApiError(-1130, "Data sent for parameter 'limit' is not valid.")
        limit = min(limit, 5000)
    elif limit not in USDM_DEPTH_LIMITS:
        raise ApiError(-1130, "Data sent for parameter 'limit' is not valid.")
    faults = emu.rest_faults
    failed = faults.take("fail", VENUE, market, feed.symbol)
    if failed is not None:
        return _error(
            ApiError(-1001, "Internal error; unable to process your request. Please try again.", _5xx(failed))
        )
    slow = faults.take("slow", VENUE, market, feed.symbol)
    stale = faults.take("stale", VENUE, market, feed.symbol)
    model = emu.engage(feed)
    now = emu.clock()
    if model is None:
        bids: list[tuple[int, int]] = []
        asks: list[tuple[int, int]] = []
        uid, changed = 0, now
    elif stale is not None:
        old_bids, old_asks, uid = model.book.state_before(int(stale.value))
        bids = sorted(old_bids.items(), reverse=True)[:limit]
        asks = sorted(old_asks.items())[:limit]
        changed = model.book.last_change_ms
    else:
        bids, asks = model.book.top(BID, limit), model.book.top(ASK, limit)
        uid, changed = model.book.uid, model.book.last_change_ms
    levels = b'"bids":%s,"asks":%s}' % (format_levels(feed, bids), format_levels(feed, asks))
    if spot:
        body = b'{"lastUpdateId":%d,' % uid + levels
    else:
        body = b'{"lastUpdateId":%d,"E":%d,"T":%d,' % (uid, now, changed) + levels
    return HttpResponse(200, body, delay=slow.value if slow is not None else 0.0)


def _agg_trades(emu: Emulator, market: str, params: Params) -> HttpResponse:
    feed = _feed(emu, market, params)
    limit = params.integer("limit", 500)
    assert limit is not None
    if limit < 1:
        raise ApiError(-1130, "Data sent for parameter 'limit' is not valid.")
    limit = min(limit, 1000)
    from_id = params.integer("fromId")
    start = params.integer("startTime")
    end = params.integer("endTime")
    if start is not None and end is not None and end - start > 3_600_000:
        raise ApiError(-1127, "More than 1 hours between startTime and endTime.")
    history = feed.history
    if history is None:
        return HttpResponse(200, b"[]")
    if from_id is not None:
        rows = [r for r in history.aggs_from_id(from_id, limit) if end is None or r.ts_ms <= end]
    else:
        rows = history.aggs_between(start, end, limit)
    if market == "spot":
        tpl = b'{"a":%d,"p":"%s","q":"%s","f":%d,"l":%d,"T":%d,"m":%s,"M":true}'
    else:
        tpl = b'{"a":%d,"p":"%s","q":"%s","f":%d,"l":%d,"T":%d,"m":%s}'
    items = [tpl % (r.agg_id, r.price, r.qty, r.first_id, r.last_id, r.ts_ms, _bool(r.maker)) for r in rows]
    return HttpResponse(200, b"[" + b",".join(items) + b"]")


def _klines(emu: Emulator, market: str, params: Params) -> HttpResponse:
    feed = _feed(emu, market, params)
    name = params.required("interval")
    interval = BINANCE_INTERVALS.get(name)
    if interval is None:
        raise ApiError(-1120, "Invalid interval.")
    limit = params.integer("limit", 500)
    assert limit is not None
    limit = max(1, min(limit, 1000 if market == "spot" else 1500))
    model = emu.engage(feed)
    if model is None:
        return HttpResponse(200, b"[]")
    model.bars.roll(emu.clock())
    bars = model.bars.candles(interval, params.integer("startTime"), params.integer("endTime"), limit)
    inst = feed.instrument
    rows = []
    for bar in bars:
        t = bar_text(bar, inst, 8 if market == "spot" else 0)
        rows.append(
            b'[%d,"%s","%s","%s","%s","%s",%d,"%s",%d,"%s","%s","0"]'
            % (
                bar.start,
                t.open,
                t.high,
                t.low,
                t.close,
                t.volume,
                interval.next_start(bar.start) - 1,
                t.quote,
                bar.trades,
                t.buy_volume,
                t.buy_quote,
            )
        )
    return HttpResponse(200, b"[" + b",".join(rows) + b"]")


def _exchange_info(emu: Emulator, market: str, params: Params) -> HttpResponse:
    wanted: list[str] | None = None
    if params.text("symbol") is not None:
        wanted = [params.required("symbol").upper()]
    elif params.text("symbols") is not None:
        try:
            parsed = orjson.loads(params.required("symbols"))
        except orjson.JSONDecodeError:
            raise BadParam("symbols") from None
        if not isinstance(parsed, list):
            raise BadParam("symbols")
        wanted = [str(s).upper() for s in parsed]
    feeds = {s: f for (v, m, s), f in emu.feeds.items() if v == VENUE and m == market}
    if wanted is not None:
        if any(s not in feeds for s in wanted):
            raise ApiError(-1121, "Invalid symbol.")
        feeds = {s: feeds[s] for s in wanted}
    spot = market == "spot"
    limits = emu.rest_limits
    rate_limits: list[dict[str, Any]] = [
        {
            "rateLimitType": "REQUEST_WEIGHT",
            "interval": "MINUTE",
            "intervalNum": 1,
            "limit": limits.spot_weight if spot else limits.usdm_weight,
        }
    ]
    if spot:
        rate_limits += [
            {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
            {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 200000},
            {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 61000},
        ]
    else:
        rate_limits += [
            {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200},
            {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 300},
        ]
    body: dict[str, Any] = {"timezone": "UTC", "serverTime": emu.clock()}
    if not spot:
        body["futuresType"] = "U_MARGINED"
    body["rateLimits"] = rate_limits
    body["exchangeFilters"] = []
    if not spot:
        body["assets"] = []
    body["symbols"] = [_symbol_info(s, f, spot) for s, f in sorted(feeds.items())]
    return HttpResponse(200, orjson.dumps(body))


def _symbol_info(symbol: str, feed: SyntheticFeed, spot: bool) -> dict[str, Any]:
    inst = feed.instrument
    base, quote = split_symbol(symbol)
    tick = format_decimal(1, inst.tick_decimals, inst.price_decimals).decode()
    step = format_decimal(1, inst.lot_decimals, inst.qty_decimals).decode()
    filters = [
        {
            "filterType": "PRICE_FILTER",
            "minPrice": tick,
            "maxPrice": format_decimal(
                10**7 * 10**inst.tick_decimals, inst.tick_decimals, inst.price_decimals
            ).decode(),
            "tickSize": tick,
        },
        {
            "filterType": "LOT_SIZE",
            "minQty": step,
            "maxQty": format_decimal(9000 * 10**inst.lot_decimals, inst.lot_decimals, inst.qty_decimals).decode(),
            "stepSize": step,
        },
    ]
    if spot:
        return {
            "symbol": symbol,
            "status": "TRADING",
            "baseAsset": base,
            "baseAssetPrecision": 8,
            "quoteAsset": quote,
            "quotePrecision": 8,
            "quoteAssetPrecision": 8,
            "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"],
            "icebergAllowed": True,
            "ocoAllowed": True,
            "isSpotTradingAllowed": True,
            "isMarginTradingAllowed": False,
            "filters": filters,
            "permissions": [],
            "permissionSets": [["SPOT"]],
        }
    return {
        "symbol": symbol,
        "pair": symbol,
        "contractType": "PERPETUAL",
        "deliveryDate": 4133404800000,
        "onboardDate": 1569398400000,
        "status": "TRADING",
        "baseAsset": base,
        "quoteAsset": quote,
        "marginAsset": quote,
        "pricePrecision": inst.tick_decimals,
        "quantityPrecision": inst.lot_decimals,
        "baseAssetPrecision": 8,
        "quotePrecision": 8,
        "underlyingType": "COIN",
        "filters": filters,
        "orderTypes": ["LIMIT", "MARKET", "STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET"],
        "timeInForce": ["GTC", "IOC", "FOK", "GTX"],
    }


def _ping(emu: Emulator, market: str, params: Params) -> HttpResponse:
    return HttpResponse(200, b"{}")


def _time(emu: Emulator, market: str, params: Params) -> HttpResponse:
    now: int = emu.clock()
    return HttpResponse(200, b'{"serverTime":%d}' % now)


def split_symbol(symbol: str) -> tuple[str, str]:
    """Split ``BTCUSDT`` into ``("BTC", "USDT")`` (best effort)."""
    for quote in _QUOTES:
        if symbol.endswith(quote) and len(symbol) > len(quote):
            return symbol[: -len(quote)], quote
    return symbol[:-4] or symbol, symbol[-4:]


_ENDPOINTS: dict[str, Callable[[Emulator, str, Params], HttpResponse]] = {
    "depth": _depth,
    "aggTrades": _agg_trades,
    "klines": _klines,
    "exchangeInfo": _exchange_info,
    "ping": _ping,
    "time": _time,
}


# -------------------------------------------------------------------- helpers


def _feed(emu: Emulator, market: str, params: Params) -> SyntheticFeed:
    symbol = params.required("symbol").upper()
    feed = emu.feeds.get((VENUE, market, symbol))
    if feed is None:
        raise ApiError(-1121, "Invalid symbol.")
    return feed


def _bool(value: bool) -> bytes:
    return b"true" if value else b"false"


def _bad_param(exc: BadParam) -> ApiError:
    if exc.missing:
        return ApiError(-1102, f"Mandatory parameter '{exc.name}' was not sent, was empty/null, or malformed.")
    return ApiError(-1100, f"Illegal characters found in parameter '{exc.name}'; legal range is '^[0-9]{{1,20}}$'.")


def _error(exc: ApiError) -> HttpResponse:
    return HttpResponse(exc.status, orjson.dumps({"code": exc.code, "msg": exc.msg}))


def _5xx(fault: RestFault) -> int:
    return int(fault.value) if fault.value >= 500 else 503


def _status(emu: Emulator, market: str, status: int, retry_after: float) -> HttpResponse:
    """A forced or limiter answer: 429/418 with ``Retry-After``, other codes as errors."""
    headers = dict(JSON_HEADERS)
    retry = str(max(1, math.ceil(retry_after)))
    if status == 429:
        budget = emu.rest_limits.spot_weight if market == "spot" else emu.rest_limits.usdm_weight
        msg = (
            f"Too many requests; current limit of IP(127.0.0.1) request weight per minute is {budget}. "
            "Please use WebSocket Streams for live updates to avoid polling the API."
        )
        headers["Retry-After"] = retry
        return HttpResponse(429, orjson.dumps({"code": -1003, "msg": msg}), headers)
    if status == 418:
        until = emu.clock() + int(float(retry) * 1000)
        msg = (
            f"Way too much request weight used; IP banned until {until}. "
            "Please use WebSocket Streams for live updates to avoid bans."
        )
        headers["Retry-After"] = retry
        return HttpResponse(418, orjson.dumps({"code": -1003, "msg": msg}), headers)
    if status >= 500:
        return _error(ApiError(-1001, "Internal error; unable to process your request. Please try again.", status))
    return _error(ApiError(-1000, "An unknown error occurred while processing the request.", status))
