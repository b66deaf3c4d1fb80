"""Bybit v5 REST market data (``/v5/market/...``, PROTOCOLS.md §3.6).

Endpoints: ``orderbook``, ``recent-trade`` (newest first; spot at most 60,
default 60; linear at most 1000, default 500), ``kline`` (newest first),
``instruments-info`` and ``time``. Every answer uses the venue's envelope
``{"retCode":0,"retMsg":"OK","result":{...},"retExtInfo":{},"time":...}``;
parameter errors are ``retCode`` 10001 with HTTP 200, as on the venue.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from wadm.emulator.binance_streams import format_levels
from wadm.emulator.book import ASK, BID
from wadm.emulator.bybit import MARKETS, trade_id_text, trade_seq
from wadm.emulator.klines import BYBIT_INTERVALS, bar_text
from wadm.emulator.market import SyntheticFeed
from wadm.emulator.rest import BadParam, HttpResponse, Params
from wadm.emulator.rest_binance import split_symbol

if TYPE_CHECKING:
    from wadm.emulator.server import Emulator

__all__ = ["respond"]

VENUE = "bybit"


class ParamsError(Exception):
    """A ``retCode`` 10001 answer."""


def respond(emu: Emulator, endpoint: str, params: Params) -> HttpResponse:
    """Answer one Bybit REST request.

    Args:
        emu: The emulator.
        endpoint: Path after ``/v5/market/``.
        params: Query parameters.
    """
    category = params.text("category") or ("linear" if endpoint == "kline" else None)
    symbol = params.text("symbol")
    forced = emu.rest_faults.take("status", VENUE, category or "", symbol)
    if forced is not None:
        return _failure(emu, int(forced.value))
    handler = _ENDPOINTS.get(endpoint)
    if handler is None:
        return HttpResponse(404, b'{"retCode":404,"retMsg":"Not Found"}')
    try:
        if endpoint != "time" and category not in MARKETS:
            raise ParamsError("params error: category is invalid")
        return handler(emu, category or "", params)
    except BadParam as exc:
        return _envelope(emu, {}, code=10001, msg=f"params error: {exc.name} invalid")
    except ParamsError as exc:
        return _envelope(emu, {}, code=10001, msg=str(exc))


def _orderbook(emu: Emulator, category: str, params: Params) -> HttpResponse:
    feed = _feed(emu, category, params)
    limit = params.integer("limit", 1 if category == "spot" else 25)
    assert limit is not None
    if not 1 <= limit <= 1000:
        raise ParamsError("params error: limit invalid")
    faults = emu.rest_faults
    failed = faults.take("fail", VENUE, category, feed.symbol)
    if failed is not None:
        return _failure(emu, int(failed.value) if failed.value >= 500 else 503)
    slow = faults.take("slow", VENUE, category, feed.symbol)
    stale = faults.take("stale", VENUE, category, feed.symbol)
    model = emu.engage(feed)
    now = emu.clock()
    if model is None:
        bids: list[tuple[int, int]] = []
        asks: list[tuple[int, int]] = []
        uid, seq, cts = 0, 0, now
    else:
        book = model.book
        seq, cts = model.cross_seq(), book.last_change_ms
        if stale is not None:
            old_bids, old_asks, uid = book.state_before(int(stale.value))
            bids = sorted(old_bids.items(), reverse=True)[:limit]
            asks = sorted(old_asks.items())[:limit]
        else:
            bids, asks, uid = book.top(BID, limit), book.top(ASK, limit), book.uid
    result = b'{"s":"%s","a":%s,"b":%s,"ts":%d,"u":%d,"seq":%d,"cts":%d}' % (
        feed.symbol.upper().encode(),
        format_levels(feed, asks),
        format_levels(feed, bids),
        now,
        uid,
        seq,
        cts,
    )
    resp = _raw_envelope(emu, result)
    resp.delay = slow.value if slow is not None else 0.0
    return resp


def _recent_trade(emu: Emulator, category: str, params: Params) -> HttpResponse:
    feed = _feed(emu, category, params)
    cap, default = (60, 60) if category == "spot" else (1000, 500)
    limit = params.integer("limit", default)
    assert limit is not None
    if not 1 <= limit <= cap:
        raise ParamsError("params error: limit invalid")
    rows = feed.history.recent_trades(limit) if feed.history is not None else []
    sym = feed.symbol.upper()
    out = [
        {
            "execId": trade_id_text(category, r.trade_id),
            "symbol": sym,
            "price": r.price.decode(),
            "size": r.qty.decode(),
            "side": "Sell" if r.maker else "Buy",
            "time": str(r.ts_ms),
            "isBlockTrade": False,
            "isRPITrade": False,
            "seq": str(trade_seq(r.trade_id)),
        }
        for r in rows
    ]
    return _envelope(emu, {"category": category, "list": out})


def _kline(emu: Emulator, category: str, params: Params) -> HttpResponse:
    feed = _feed(emu, category, params)
    interval = BYBIT_INTERVALS.get(params.required("interval"))
    if interval is None:
        raise ParamsError("params error: interval invalid")
    limit = params.integer("limit", 200)
    assert limit is not None
    if not 1 <= limit <= 1000:
        raise ParamsError("params error: limit invalid")
    model = emu.engage(feed)
    rows: list[list[str]] = []
    if model is not None:
        model.bars.roll(emu.clock())
        for bar in reversed(model.bars.candles(interval, params.integer("start"), params.integer("end"), limit)):
            t = bar_text(bar, feed.instrument)
            rows.append([str(bar.start)] + [v.decode() for v in (t.open, t.high, t.low, t.close, t.volume, t.quote)])
    return _envelope(emu, {"symbol": feed.symbol.upper(), "category": category, "list": rows})


def _instruments(emu: Emulator, category: str, params: Params) -> HttpResponse:
    wanted = params.text("symbol")
    items = []
    for (v, m, s), feed in sorted(emu.feeds.items()):
        if v != VENUE or m != category or (wanted is not None and s != wanted.upper()):
            continue
        items.append(_instrument(s, feed, category))
    return _envelope(emu, {"category": category, "list": items, "nextPageCursor": ""})


def _instrument(symbol: str, feed: SyntheticFeed, category: str) -> dict[str, Any]:
    inst = feed.instrument
    base, quote = split_symbol(symbol)
    tick = inst.price_text(1)
    step = inst.qty_text(1)
    if category == "spot":
        return {
            "symbol": symbol,
            "baseCoin": base,
            "quoteCoin": quote,
            "innovation": "0",
            "status": "Trading",
            "marginTrading": "none",
            "lotSizeFilter": {
                "basePrecision": step.decode(),
                "quotePrecision": "0.00000001",
                "minOrderQty": step.decode(),
                "maxOrderQty": "10000",
                "minOrderAmt": "1",
                "maxOrderAmt": "2000000",
            },
            "priceFilter": {"tickSize": tick.decode()},
        }
    return {
        "symbol": symbol,
        "contractType": "LinearPerpetual",
        "status": "Trading",
        "baseCoin": base,
        "quoteCoin": quote,
        "settleCoin": quote,
        "launchTime": "1584230400000",
        "deliveryTime": "0",
        "priceScale": str(inst.price_decimals),
        "priceFilter": {"minPrice": tick.decode(), "maxPrice": "1999999.80", "tickSize": tick.decode()},
        "lotSizeFilter": {
            "maxOrderQty": "1190.000",
            "minOrderQty": step.decode(),
            "qtyStep": step.decode(),
            "postOnlyMaxOrderQty": "1190.000",
        },
        "fundingInterval": 480,
    }


def _time(emu: Emulator, category: str, params: Params) -> HttpResponse:
    now = emu.clock()
    return _envelope(emu, {"timeSecond": str(now // 1000), "timeNano": str(now * 1_000_000)})


_ENDPOINTS: dict[str, Callable[[Emulator, str, Params], HttpResponse]] = {
    "orderbook": _orderbook,
    "recent-trade": _recent_trade,
    "kline": _kline,
    "instruments-info": _instruments,
    "time": _time,
}


def _feed(emu: Emulator, category: str, params: Params) -> SyntheticFeed:
    symbol = params.required("symbol").upper()
    feed = emu.feeds.get((VENUE, category, symbol))
    if feed is None:
        raise ParamsError("params error: symbol invalid")
    return feed


def _envelope(emu: Emulator, result: dict[str, Any], *, code: int = 0, msg: str = "OK") -> HttpResponse:
    return HttpResponse(
        200,
        orjson.dumps({"retCode": code, "retMsg": msg, "result": result, "retExtInfo": {}, "time": emu.clock()}),
    )


def _raw_envelope(emu: Emulator, result: bytes) -> HttpResponse:
    return HttpResponse(
        200, b'{"retCode":0,"retMsg":"OK","result":' + result + b',"retExtInfo":{},"time":%d}' % emu.clock()
    )


def _failure(emu: Emulator, status: int) -> HttpResponse:
    code, msg = (10006, "Too many visits!") if status in (403, 418, 429) else (10016, "Server error.")
    body = orjson.dumps({"retCode": code, "retMsg": msg, "result": {}, "retExtInfo": {}, "time": emu.clock()})
    return HttpResponse(status, body)
