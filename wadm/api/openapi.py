"""The OpenAPI 3 document served at ``/openapi.json``."""

from __future__ import annotations

from typing import Any

from wadm.api.openapi_analytics import ANALYTICS_PATHS, ANALYTICS_SCHEMAS

__all__ = ["openapi_document"]

_ERROR = {"$ref": "#/components/schemas/Error"}


def _param(name: str, where: str, desc: str, schema: dict[str, Any], required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required, "description": desc, "schema": schema}


_SYMBOL_SCHEMA = {"type": "string", "pattern": "^[A-Za-z0-9]{2,20}$"}
_TIME_SCHEMA = {"type": "string", "pattern": r"^([0-9]{1,13}|[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}"
                r"(:[0-9]{2}(\.[0-9]{1,9})?)?(Z|[+-][0-9]{2}:[0-9]{2})?)?)$"}
_SERIES = [
    _param("symbol", "path", "Symbol as the venue writes it, e.g. BTCUSDT (2-20 ASCII letters or digits).",
           _SYMBOL_SCHEMA, True),
    _param("exchange", "query", "binance or bybit; needed when the symbol is collected on several markets.",
           {"type": "string", "enum": ["binance", "bybit"]}),
    _param("market", "query", "spot, usdm or linear.", {"type": "string", "enum": ["spot", "usdm", "linear"]}),
]
_RANGE = [
    _param("start", "query", "Epoch milliseconds or ISO-8601 (UTC when no offset), between 2000-01-01 and "
           "2100-01-01.", _TIME_SCHEMA),
    _param("end", "query", "Epoch milliseconds or ISO-8601; default now.", _TIME_SCHEMA),
    _param("window", "query", "The window ending now, e.g. 15m, 1h, 24h (1s to 30d); excludes start/end.",
           {"type": "string", "pattern": "^[0-9]{1,6}[smhd]$"}),
]


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "Bad, unknown or repeated parameter; the error names it and says what is allowed.",
            404: "Unknown path or symbol not collected.",
            429: "Too many heavy requests at once; retry after the Retry-After header's seconds.",
            503: "Not ready: no live data here yet, or the store cannot answer right now (Retry-After)."}
    return {str(c): {"description": text[c], "content": {"application/json": {"schema": _ERROR}}} for c in codes}


def openapi_document(version: str) -> dict[str, Any]:
    """Return the OpenAPI document of the REST API."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "WADM market data API",
            "version": version,
            "description": "Read-only market data collected from Binance and Bybit. Times are epoch milliseconds. "
                           "Every operation answers HEAD too. Data endpoints refuse parameters they do not "
                           "know and parameters given twice. Heavy requests (store reads) are admitted up to a "
                           "bound; past it they are answered 429 with Retry-After. Malformed HTTP (a bad "
                           "request line, a request line of 64 KB or more, more than 100 headers or a request "
                           "head over about 112 KB) is answered by the HTTP server itself with 400, 414 or 431 "
                           "and an empty body.",
        },
        "paths": {
            "/health": {
                "get": {
                    "summary": "Service health: 200 when every configured stream is live and fresh, else 503.",
                    "responses": {
                        "200": {"description": "Healthy.", "content": {"application/json": {"schema": {
                            "$ref": "#/components/schemas/Health"}}}},
                        "503": {"description": "Degraded or starting; the body says which stream and why.",
                                "content": {"application/json": {"schema": {
                                    "$ref": "#/components/schemas/Health"}}}},
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics in the text exposition format.",
                    "responses": {"200": {"description": "Metrics.", "content": {"text/plain": {}}}},
                }
            },
            "/openapi.json": {
                "get": {"summary": "This document.", "responses": {"200": {"description": "OpenAPI 3 document."}}}
            },
            "/api/v1/symbols": {
                "get": {
                    "summary": "What is collected: exchange, market, symbol, streams, since when.",
                    "responses": {"200": {"description": "Collected series.", "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/Symbols"}}}}},
                }
            },
            "/api/v1/trades/{symbol}": {
                "get": {
                    "summary": "Raw trades in a range, oldest first, with cursor paging.",
                    "parameters": [
                        *_SERIES,
                        *_RANGE,
                        _param("limit", "query", "Rows per page, 1 to 10000 (default 1000).",
                               {"type": "integer", "minimum": 1, "maximum": 10000}),
                        _param("cursor", "query", "The `next` of the previous page, with the same other parameters.",
                               {"type": "string"}),
                    ],
                    "responses": {
                        "200": {"description": "A page of trades.", "content": {"application/json": {"schema": {
                            "$ref": "#/components/schemas/TradesPage"}}}},
                        **_errors(400, 404, 429, 503),
                    },
                }
            },
            "/api/v1/gaps": {
                "get": {
                    "summary": "Known windows of missing or unverified data, oldest first.",
                    "parameters": [
                        _param("symbol", "query", "Only this symbol, on every market it is collected on "
                               "unless exchange or market narrow it.", _SYMBOL_SCHEMA),
                        *_SERIES[1:],
                        *_RANGE,
                        _param("limit", "query", "Rows, 1 to 10000 (default 1000).",
                               {"type": "integer", "minimum": 1, "maximum": 10000}),
                        _param("channel", "query", "Only gaps of this channel.",
                               {"type": "string", "enum": ["trades", "book", "klines"]}),
                    ],
                    "responses": {
                        "200": {"description": "Gaps.", "content": {"application/json": {"schema": {
                            "type": "object", "properties": {
                                "gaps": {"type": "array", "items": {"$ref": "#/components/schemas/Gap"}},
                                "count": {"type": "integer"}, "truncated": {"type": "boolean"},
                                "start": {"type": "integer"}, "end": {"type": "integer"}}}}}},
                        **_errors(400, 404, 429, 503),
                    },
                }
            },
            "/api/v1/klines/{symbol}": {
                "get": {
                    "summary": "The venue's bars; longer intervals are built from 1-minute bars. The open bar is "
                               "included with closed=false. With start: the oldest bars from start; without: "
                               "the newest up to end.",
                    "parameters": [
                        *_SERIES,
                        *_RANGE,
                        _param("interval", "query", "Bar length (default 1m).",
                               {"type": "string", "enum": ["1m", "5m", "15m", "1h", "4h"]}),
                        _param("limit", "query", "Bars, 1 to 1500 (default 500).",
                               {"type": "integer", "minimum": 1, "maximum": 1500}),
                    ],
                    "responses": {
                        "200": {"description": "Bars, oldest first.", "content": {"application/json": {"schema": {
                            "$ref": "#/components/schemas/Klines"}}}},
                        **_errors(400, 404, 429, 503),
                    },
                }
            },
            "/api/v1/orderbook/{symbol}": {
                "get": {
                    "summary": "The live order book, exact or marked resyncing (then without levels).",
                    "parameters": [
                        *_SERIES,
                        _param("depth", "query", "Levels per side, 1 to 1000 (default 20).",
                               {"type": "integer", "minimum": 1, "maximum": 1000}),
                    ],
                    "responses": {
                        "200": {"description": "The book.", "content": {"application/json": {"schema": {
                            "$ref": "#/components/schemas/OrderBook"}}}},
                        **_errors(400, 404, 503),
                    },
                }
            },
            "/api/v1/orderbook/{symbol}/history": {
                "get": {
                    "summary": "Stored book snapshots (top levels, mid, spread, band depth and imbalance) in a "
                               "range, oldest first, with cursor paging.",
                    "parameters": [
                        *_SERIES,
                        *_RANGE,
                        _param("depth", "query", "Levels per side in each snapshot, 1 to 1000 (default 20; at "
                               "most what was stored, BOOK_SNAPSHOT_DEPTH).",
                               {"type": "integer", "minimum": 1, "maximum": 1000}),
                        _param("limit", "query", "Snapshots per page, 1 to 3600 (default 60); limit × depth "
                               "must be at most 72000.", {"type": "integer", "minimum": 1, "maximum": 3600}),
                        _param("cursor", "query", "The `next` of the previous page.", {"type": "string"}),
                    ],
                    "responses": {
                        "200": {"description": "Snapshots.", "content": {"application/json": {"schema": {
                            "type": "object", "properties": {
                                "snapshots": {"type": "array", "items": {"type": "object"}},
                                "next": {"type": ["string", "null"]},
                                "data_complete": {"type": "boolean"},
                                "gaps": {"type": "array", "items": {"$ref": "#/components/schemas/Gap"}}}}}}},
                        **_errors(400, 404, 429, 503),
                    },
                }
            },
            **ANALYTICS_PATHS,
        },
        "components": {
            "schemas": {
                **ANALYTICS_SCHEMAS,
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {
                        "code": {"type": "string"},
                        "message": {"type": "string"},
                        "parameter": {"type": ["string", "null"]},
                    }}},
                },
                "Trade": {
                    "type": "object",
                    "required": ["id", "ts", "price", "qty", "side"],
                    "properties": {
                        "id": {"oneOf": [{"type": "integer"}, {"type": "string"}],
                               "description": "Venue trade id: integer on Binance, string on Bybit."},
                        "ts": {"type": "integer", "description": "Trade time, epoch ms."},
                        "price": {"type": "number"},
                        "qty": {"type": "number"},
                        "side": {"type": "string", "enum": ["buy", "sell"], "description": "The aggressor."},
                    },
                },
                "Gap": {
                    "type": "object",
                    "required": ["exchange", "market", "symbol", "stream", "start", "end", "reason", "missing"],
                    "properties": {
                        "exchange": {"type": "string"},
                        "market": {"type": "string"},
                        "symbol": {"type": "string"},
                        "stream": {"type": "string"},
                        "start": {"type": "integer", "description": "Last good record before the gap, epoch ms."},
                        "end": {"type": "integer", "description": "First good record after the gap, epoch ms."},
                        "channel": {"type": "string", "enum": ["trades", "book", "klines"]},
                        "reason": {"type": "string", "description": "missing_ids (skipped trade ids REST "
                                   "could not recover), disconnected (a disconnect window), restart (WADM was "
                                   "not running), buffer_full (a stream buffer overflowed), store_backlog "
                                   "(dropped for a failing store), klines_missing (closed bars not recovered), "
                                   "book_<why> (the book was not exact: gap, crossed, disconnected); and, "
                                   "until they end: backfilling, not_yet_written (a slow store)."},
                        "missing": {"type": ["integer", "null"], "description": "Records known missing; null "
                                    "when unknown."},
                    },
                },
                "TradesPage": {
                    "type": "object",
                    "required": ["exchange", "market", "symbol", "start", "end", "count", "trades", "next"],
                    "properties": {
                        "exchange": {"type": "string"},
                        "market": {"type": "string"},
                        "symbol": {"type": "string"},
                        "start": {"type": "integer"},
                        "end": {"type": "integer"},
                        "count": {"type": "integer"},
                        "trades": {"type": "array", "items": {"$ref": "#/components/schemas/Trade"}},
                        "next": {"type": ["string", "null"],
                                 "description": "Cursor of the next page; null on the last."},
                        "data_complete": {"type": "boolean",
                                          "description": "False when known gaps overlap the range."},
                        "gaps": {"type": "array", "items": {"$ref": "#/components/schemas/Gap"}},
                    },
                },
                "OrderBook": {
                    "type": "object",
                    "required": ["exchange", "market", "symbol", "ts", "state", "bids", "asks", "mid", "spread"],
                    "properties": {
                        "exchange": {"type": "string"},
                        "market": {"type": "string"},
                        "symbol": {"type": "string"},
                        "ts": {"type": ["integer", "null"], "description": "Exchange time of the last update."},
                        "state": {"type": "string", "enum": ["live", "resyncing"]},
                        "bids": {"type": "array", "description": "[price, qty], best (highest) first.",
                                 "items": {"type": "array", "items": {"type": "number"}}},
                        "asks": {"type": "array", "description": "[price, qty], best (lowest) first.",
                                 "items": {"type": "array", "items": {"type": "number"}}},
                        "mid": {"type": ["number", "null"]},
                        "spread": {"type": ["number", "null"]},
                        "update_id": {"type": ["integer", "null"]},
                        "bands": {"type": "object", "description": "bid_depth_/ask_depth_/imbalance_ within "
                                  "0.1pct, 0.5pct and 1pct of mid."},
                        "walls": {"type": ["object", "null"], "description": "The largest levels (at most 5 per "
                                  "side) within 1 % of mid holding at least 3x their side's median level there, "
                                  "over the whole book: {band, factor, bids: [{price, qty, multiple}], asks}."},
                        "stale": {"type": "boolean", "description": "The stream has been silent past the "
                                  "watchdog's limit: exact as of ts, but possibly old."},
                        "age_ms": {"type": "integer", "description": "Time since the last update was received."},
                    },
                },
                "Klines": {
                    "type": "object",
                    "properties": {
                        "exchange": {"type": "string"},
                        "market": {"type": "string"},
                        "symbol": {"type": "string"},
                        "interval": {"type": "string"},
                        "klines": {"type": "array", "items": {"type": "object", "properties": {
                            "ts": {"type": "integer", "description": "Open time, epoch ms."},
                            "open": {"type": "number"}, "high": {"type": "number"}, "low": {"type": "number"},
                            "close": {"type": "number"}, "volume": {"type": "number"},
                            "quote_volume": {"type": "number"},
                            "trades": {"type": ["integer", "null"]},
                            "taker_buy_volume": {"type": ["number", "null"], "description": "Binance only."},
                            "taker_buy_quote": {"type": ["number", "null"]},
                            "closed": {"type": "boolean"},
                            "minutes": {"type": "integer", "description": "1-minute bars merged."},
                            "complete": {"type": "boolean", "description": "Every minute that has ended "
                                         "within the bar is there."},
                        }}},
                        "truncated": {"type": "boolean", "description": "The range holds more bars."},
                        "partial_bars": {"type": "array", "items": {"type": "integer"},
                                         "description": "Open times of the bars that are not complete."},
                        "data_complete": {"type": "boolean"},
                        "gaps": {"type": "array", "items": {"$ref": "#/components/schemas/Gap"}},
                    },
                },
                "Symbols": {
                    "type": "object",
                    "properties": {"symbols": {"type": "array", "items": {"type": "object", "properties": {
                        "exchange": {"type": "string"},
                        "market": {"type": "string"},
                        "symbol": {"type": "string"},
                        "streams": {"type": "array", "items": {"type": "string"}},
                        "channels": {"type": "array", "items": {"type": "string"}},
                        "since": {"type": ["integer", "null"], "description": "When this process started "
                                  "collecting it (epoch ms); null when it is not collecting."},
                        "collecting": {"type": "boolean"},
                        "tick_size": {"type": ["number", "null"], "description": "The venue's price increment "
                                      "(from its listing); null until the listing was read."},
                        "lot_size": {"type": ["number", "null"], "description": "The venue's quantity increment."},
                    }}}},
                },
                "Health": {
                    "type": "object",
                    "required": ["status", "streams", "store"],
                    "properties": {
                        "status": {"type": "string", "enum": ["ok", "degraded", "starting"]},
                        "streams": {"type": "array", "items": {"type": "object"}},
                        "connections": {"type": "array", "items": {"type": "object"}},
                        "store": {"type": "object"},
                        "collectors": {"type": "object"},
                    },
                },
            }
        },
    }
