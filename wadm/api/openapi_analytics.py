"""The OpenAPI description of the analytics endpoints (merged into ``/openapi.json``)."""

from __future__ import annotations

from typing import Any

__all__ = ["ANALYTICS_PATHS", "ANALYTICS_SCHEMAS"]

_NUM = {"type": "number"}
_NUM_OR_NULL = {"type": ["number", "null"]}
_INT = {"type": "integer"}
_STR = {"type": "string"}
_INTERVAL = {"type": "string", "enum": ["1m", "5m", "15m", "1h", "4h"]}
_ROW_SIZE = {"type": "string", "pattern": r"^([0-9]{1,12}(\.[0-9]{1,12})?|\.[0-9]{1,12})$"}


def _p(name: str, where: str, desc: str, schema: dict[str, Any], required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required, "description": desc, "schema": schema}


def _error(status: int, text: str) -> dict[str, Any]:
    return {str(status): {"description": text, "content": {"application/json": {"schema": {
        "$ref": "#/components/schemas/Error"}}}}}


_ERRORS = {
    **_error(400, "Bad, unknown or repeated parameter; the error names it and says what is allowed (which "
                  "resolutions or row sizes can answer the window)."),
    **_error(404, "Symbol not collected there."),
    **_error(429, "Too many heavy requests at once; retry after Retry-After seconds."),
    **_error(503, "Not ready (the tick is not known yet) or the store cannot answer now."),
}

_SOURCES = [
    _p("symbol", "path", "Symbol as the venue writes it, e.g. BTCUSDT.", {"type": "string",
       "pattern": "^[A-Za-z0-9]{2,20}$"}, True),
    _p("exchange", "query", "binance or bybit. Omitted (with market): every market the symbol is collected on, "
       "combined on one row grid.", {"type": "string", "enum": ["binance", "bybit"]}),
    _p("market", "query", "spot, usdm or linear.", {"type": "string", "enum": ["spot", "usdm", "linear"]}),
]
_WINDOW = [
    _p("start", "query", "Epoch milliseconds or ISO-8601 (UTC when no offset).", _STR),
    _p("end", "query", "Epoch milliseconds or ISO-8601; default now.", _STR),
    _p("window", "query", "The window ending now, e.g. 15m, 4h, 24h, 7d (1s to 30d); excludes start/end.",
       {"type": "string", "pattern": "^[0-9]{1,6}[smhd]$"}),
]
_ROW = _p("row_size", "query", "Row height in price units, a multiple of the tick (raw trades) or of the stored "
          "footprints' row (1m/1h); default: the stored footprint row (about price/3000, or FOOTPRINT_ROW).",
          _ROW_SIZE)
_RATIO = _p("imbalance_ratio", "query", "Diagonal imbalance ratio, 1.01 to 100 (default 3.0, C13).",
            {"type": "number", "minimum": 1.01, "maximum": 100})
_STACKED = _p("stacked", "query", "Adjacent imbalanced rows that make a stack, 2 to 50 (default 3, C14).",
              {"type": "integer", "minimum": 2, "maximum": 50})


def _ok(text: str, schema: str) -> dict[str, Any]:
    return {"200": {"description": text, "content": {"application/json": {"schema": {
        "$ref": f"#/components/schemas/{schema}"}}}}}


ANALYTICS_PATHS: dict[str, Any] = {
    "/api/v1/volume-profile/{symbol}": {"get": {
        "summary": "Volume profile of a window: POC, value area (VAH/VAL), HVN/LVN, naked POCs of earlier UTC "
                   "days; rows only when asked. Answered from raw trades within raw retention, else from 1m or "
                   "1h footprints (resolution says which). Default window: 24h.",
        "parameters": [
            *_SOURCES, *_WINDOW, _ROW,
            _p("value_area", "query", "Share of volume in the value area, 0.5 to 0.95 (default 0.70).",
               {"type": "number", "minimum": 0.5, "maximum": 0.95}),
            _p("va_method", "query", "two_row (default, C5) or one_row (C6).",
               {"type": "string", "enum": ["two_row", "one_row"]}),
            _p("nodes", "query", "HVN/LVN neighbourhood in rows, 1 to 50 (default 1).",
               {"type": "integer", "minimum": 1, "maximum": 50}),
            _p("rows", "query", "none (default), all, or N: the N rows around the POC (at most 5000).", _STR),
            _p("resolution", "query", "auto (default: the finest data that reaches the window's start), trades, "
               "1m or 1h.", {"type": "string", "enum": ["auto", "trades", "1m", "1h"]}),
            _p("naked", "query", "true (default): list the naked POCs of earlier UTC days; false: skip them (a "
               "cheaper answer, `naked_pocs` empty).", {"type": "string", "enum": ["true", "false"]}),
        ],
        "responses": {**_ok("The profile.", "VolumeProfile"), **_ERRORS},
    }},
    "/api/v1/order-flow/current/{symbol}": {"get": {
        "summary": "Order flow now: last price, CVD since 00:00 UTC, the open 1-minute bar, 5m/15m/1h/4h/24h "
                   "windows of whole minutes ending now, large trades and stacked imbalances of the lookback, "
                   "and book imbalance per market with a live book.",
        "parameters": [
            *_SOURCES,
            _p("large_notional", "query", "Least notional (quote units) of a large trade; default the 99th "
               "percentile of the notionals of the lookback's closed minutes, rounded down to 1, 2 or 5 times "
               "a power of ten. `large_orders` applies it to prints merged by timestamp and side.",
               {"type": "number", "exclusiveMinimum": 0}),
            _p("window", "query", "Lookback of large trades and imbalances (default 15m, at most raw retention).",
               {"type": "string", "pattern": "^[0-9]{1,6}[smhd]$"}),
            _p("limit", "query", "Large trades (and large orders) listed, 1 to 200 (default 20).",
               {"type": "integer", "minimum": 1, "maximum": 200}),
            _RATIO, _STACKED,
        ],
        "responses": {**_ok("Order flow now.", "OrderFlowNow"), **_ERRORS},
    }},
    "/api/v1/order-flow/{symbol}/footprint": {"get": {
        "summary": "Footprint bars: OHLC, volume, delta candle, CVD, rows (buy/sell per row), diagonal "
                   "imbalances and stacks. From stored 1m footprints (1h ones for 1h/4h past 1m retention); "
                   "the open bar is included. Default window: limit bars ending now.",
        "parameters": [
            *_SOURCES, *_WINDOW,
            _p("interval", "query", "Bar length (default 1m).", _INTERVAL), _ROW, _RATIO, _STACKED,
            _p("limit", "query", "Newest bars listed, 1 to 500 (default 30).",
               {"type": "integer", "minimum": 1, "maximum": 500}),
        ],
        "responses": {**_ok("Footprint bars, oldest first.", "Footprint"), **_ERRORS},
    }},
    "/api/v1/market-structure/{symbol}": {"get": {
        "summary": "Swings (HH/HL/LH/LL), trend by labels, bias and BOS/CHoCH on close, the current range, key "
                   "levels with distance, and Wyckoff candidates with their inputs (never verdicts).",
        "parameters": [
            *_SOURCES, *_WINDOW,
            _p("interval", "query", "Bar length (default 15m).", _INTERVAL),
            _p("swing", "query", "Bars each side of a swing (L = R), 1 to 20 (default 2).",
               {"type": "integer", "minimum": 1, "maximum": 20}),
            _p("limit", "query", "Newest bars used, 1 to 1500 (default 200).",
               {"type": "integer", "minimum": 1, "maximum": 1500}),
            _p("levels", "query", "Key levels: `all` (default: unbroken swings and the window's volume profile POC, "
                                  "VAH and VAL) or `swings` (the swings alone, a cheaper answer).",
               {"type": "string", "enum": ["all", "swings"]}),
        ],
        "responses": {**_ok("Market structure.", "MarketStructure"), **_ERRORS},
    }},
    "/api/v1/indicators/{symbol}/history": {"get": {
        "summary": "Stored per-minute snapshots of the UTC day so far (Volume Profile and Order Flow), one row "
                   "per market and minute, oldest first (the newest `limit` of the window; default 24h).",
        "parameters": [
            *_SOURCES, *_WINDOW,
            _p("limit", "query", "Snapshots, 1 to 1440 (default 60).",
               {"type": "integer", "minimum": 1, "maximum": 1440}),
        ],
        "responses": {**_ok("Snapshots.", "IndicatorHistory"), **_ERRORS},
    }},
}

_HEAD = {
    "exchange": {**_STR, "description": "When the answer covers one market."},
    "market": _STR,
    "sources": {"type": "array", "items": {"type": "object", "properties": {"exchange": _STR, "market": _STR}}},
    "symbol": _STR,
    "start": {**_INT, "description": "Epoch ms; aligned to the first bar used."},
    "end": _INT,
    "resolution": {"type": "string", "enum": ["trades", "1m", "1h"]},
    "data_complete": {"type": "boolean"},
    "gaps": {"type": "array", "items": {"$ref": "#/components/schemas/Gap"}},
}
_BAR = {k: _NUM_OR_NULL for k in ("open", "high", "low", "close", "volume", "buy", "sell", "delta", "delta_min",
                                   "delta_max")}

ANALYTICS_SCHEMAS: dict[str, Any] = {
    "VolumeProfile": {"type": "object", "required": [
        "symbol", "start", "end", "resolution", "data_complete", "gaps", "row_size", "total_volume", "buy_volume",
        "sell_volume", "delta", "poc", "vah", "val", "value_area", "va_method", "hvn", "lvn", "naked_pocs"],
        "properties": {**_HEAD, "row_size": _NUM_OR_NULL, "total_volume": _NUM, "buy_volume": _NUM,
                       "sell_volume": _NUM, "delta": _NUM, "poc": _NUM_OR_NULL, "vah": _NUM_OR_NULL,
                       "val": _NUM_OR_NULL, "value_area": _NUM, "va_method": _STR,
                       "hvn": {"type": "array", "items": _NUM}, "lvn": {"type": "array", "items": _NUM},
                       "naked_pocs": {"type": "array", "items": {"type": "object", "properties": {
                           "session": _INT, "poc": _NUM}}},
                       "rows": {"type": "array", "items": {"type": "object", "properties": {
                           k: _NUM for k in ("price", "volume", "buy", "sell", "delta")}}}}},
    "OrderFlowNow": {"type": "object", "required": [
        "ts", "price", "cvd", "bar", "windows", "large_trades", "imbalances", "book"],
        "properties": {**_HEAD, "ts": _INT, "price": _NUM_OR_NULL, "cvd": _NUM,
                       "bar": {"type": "object", "properties": {"start": _INT, "trades": _INT, **_BAR}},
                       "windows": {"type": "object", "additionalProperties": {"type": "object", "properties": {
                           "start": _INT, "volume": _NUM, "buy": _NUM, "sell": _NUM, "delta": _NUM,
                           "trades": _INT}}},
                       "large_notional": _NUM,
                       "lookback_start": _INT,
                       "large_trades": {"type": "array", "items": {"type": "object", "properties": {
                           "ts": _INT, "price": _NUM, "qty": _NUM, "notional": _NUM, "side": _STR,
                           "exchange": _STR, "market": _STR}}},
                       "large_orders": {"type": "array", "items": {"type": "object", "properties": {
                           "ts": _INT, "price": _NUM, "qty": _NUM, "notional": _NUM, "side": _STR, "prints": _INT,
                           "exchange": _STR, "market": _STR}}},
                       "imbalances": {"type": "array", "items": {"type": "object", "properties": {
                           "ts": _INT, "side": _STR, "from": _NUM, "to": _NUM}}},
                       "book": {"type": "array", "items": {"type": "object", "properties": {
                           "exchange": _STR, "market": _STR, "mid": _NUM_OR_NULL, "spread": _NUM_OR_NULL,
                           "imbalance": {"type": ["object", "null"]}}}}}},
    "Footprint": {"type": "object", "required": ["bars"], "properties": {
        **_HEAD, "interval": _STR, "row_size": _NUM_OR_NULL,
        "bars": {"type": "array", "items": {"type": "object", "properties": {
            "start": _INT, "trades": _INT, "cvd": _NUM, **_BAR,
            "rows": {"type": "array", "items": {"type": "object", "properties": {
                "price": _NUM, "buy": _NUM, "sell": _NUM}}},
            "buy_imbalances": {"type": "array", "items": _NUM},
            "sell_imbalances": {"type": "array", "items": _NUM},
            "stacked": {"type": "array", "items": {"type": "object", "properties": {
                "side": _STR, "from": _NUM, "to": _NUM}}}}}}}},
    "MarketStructure": {"type": "object", "required": ["trend", "swings", "events", "range", "key_levels", "wyckoff"],
                        "properties": {
        **_HEAD, "interval": _STR, "trend": {"type": "string", "enum": ["up", "down", "range"]},
        "bias": {"type": "string", "enum": ["bullish", "bearish", "neutral"]},
        "swings": {"type": "array", "items": {"type": "object", "properties": {
            "ts": _INT, "price": _NUM, "kind": _STR, "label": {"type": ["string", "null"]}}}},
        "events": {"type": "array", "items": {"type": "object", "properties": {
            "ts": _INT, "type": _STR, "direction": _STR, "level": _NUM}}},
        "range": {"type": ["object", "null"], "properties": {"high": _NUM, "low": _NUM, "since": _INT}},
        "key_levels": {"type": "array", "items": {"type": "object", "properties": {
            "price": _NUM, "kind": _STR, "distance_pct": _NUM_OR_NULL}}},
        "wyckoff": {"type": "array", "items": {"type": "object", "properties": {
            "ts": _INT, "type": _STR, "level": _NUM, "volume_ratio": _NUM_OR_NULL, "atr_multiple": _NUM_OR_NULL}}},
        "divergences": {"type": "array", "description": "CVD divergences at consecutive swings of one kind: "
                        "bearish = a higher high on a lower delta accumulated over the window, bullish = a lower "
                        "low on a higher one.", "items": {"type": "object", "properties": {
                            "ts": _INT, "kind": _STR, "direction": _STR, "price": _NUM, "cum_delta": _NUM,
                            "prev_ts": _INT, "prev_price": _NUM, "prev_cum_delta": _NUM}}},
        "delta_divergences": {"type": "array", "description": "The newest bars (at most 10) that closed against "
                              "their own delta: up_bar_negative_delta or down_bar_positive_delta.",
                              "items": {"type": "object", "properties": {"ts": _INT, "type": _STR}}},
    }},
    "IndicatorHistory": {"type": "object", "required": ["snapshots"], "properties": {
        **_HEAD, "count": _INT, "truncated": {"type": "boolean"},
        "snapshots": {"type": "array", "items": {"type": "object"}}}},
}
