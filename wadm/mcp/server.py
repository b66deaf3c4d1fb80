"""``wadm mcp``: WADM's data as read-only MCP tools for an LLM.

The server holds no data and no analytics of its own: every tool is one or a few calls to a WADM
REST API (``WADM_URL``, with ``WADM_API_KEY``), cut down to what a model should read. Transports:
stdio (the default, for Claude Desktop and Claude Code) and streamable HTTP (``--http``).

A failed call (WADM unreachable, a refused key, an unknown symbol, no data yet) comes back as a
tool error whose text says what to do; the server itself keeps running.
"""

from __future__ import annotations

import argparse
import hmac
import ipaddress
import logging
import os
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Annotated, Any, Literal

from mcp.server import MCPServer
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, Field

from wadm.mcp import analysis, tools
from wadm.mcp import models as m
from wadm.mcp.client import DEFAULT_URL, WadmClient

__all__ = ["build_server", "main"]

log = logging.getLogger("wadm.mcp")

INSTRUCTIONS = """\
WADM collects trades, order books and klines of Binance and Bybit (spot and perpetuals) and
computes Volume Profile, Order Flow and Market Structure from them. Start with
get_wyckoff_context(symbol) for the whole picture in one call, then drill down with the other
tools. Times are UTC (ISO-8601); prices are on the instrument's tick. When an answer says
INCOMPLETE, a gap in the data overlaps its window: say so in your analysis."""

Symbol = Annotated[str, Field(pattern=r"^[A-Za-z0-9]{2,30}$",
                              description="the symbol as the venue writes it, e.g. BTCUSDT (list_markets lists them)")]
Exchange = Annotated[Literal["binance", "bybit"] | None,
                     Field(description="one exchange; omit to combine every market the symbol is collected on")]
Market = Annotated[Literal["spot", "usdm", "linear"] | None,
                   Field(description="spot, usdm (Binance USD-M futures) or linear (Bybit perpetuals)")]
Interval = Literal["1m", "5m", "15m", "1h", "4h"]
READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False)


def _result(answer: Awaitable[tuple[BaseModel, str]]) -> Awaitable[CallToolResult]:
    async def run() -> CallToolResult:
        model, text = await answer
        return CallToolResult(content=[TextContent(type="text", text=text)],
                              structured_content=model.model_dump(mode="json"))
    return run()


def build_server(client: WadmClient) -> MCPServer:
    """The MCP server with every tool and the analysis prompt, reading WADM through ``client``."""
    server: MCPServer = MCPServer("wadm", title="WADM market data", instructions=INSTRUCTIONS)
    tool = server.tool

    @tool(annotations=READ_ONLY)
    async def list_markets() -> Annotated[CallToolResult, m.Markets]:
        """What WADM collects: every symbol with its exchanges and markets, since when, tick and lot sizes."""
        return await _result(tools.markets(client))

    @tool(annotations=READ_ONLY)
    async def get_status(
        hours: Annotated[int, Field(ge=1, le=168, description="how far back to list data gaps")] = 6,
    ) -> Annotated[CallToolResult, m.Status]:
        """WADM's health in one paragraph: which streams are live, stale or resyncing, the store, and the data
        gaps of the last hours. Call it when data looks odd or before trusting a fresh analysis."""
        return await _result(tools.status(client, hours))

    @tool(annotations=READ_ONLY)
    async def get_price(symbol: Symbol, exchange: Exchange = None,
                        market: Market = None) -> Annotated[CallToolResult, m.Price]:
        """Last trade, mid and spread, 1h and 24h change and volume, per market of the symbol."""
        return await _result(tools.price(client, symbol.upper(), exchange, market))

    @tool(annotations=READ_ONLY)
    async def get_ohlcv(
        symbol: Symbol, exchange: Exchange = None, market: Market = None, interval: Interval = "1h",
        limit: Annotated[int, Field(ge=1, le=500, description="bars, newest last")] = 24,
    ) -> Annotated[CallToolResult, m.Ohlcv]:
        """OHLCV bars as ccxt-style rows [time, open, high, low, close, volume] of one market (the first one the
        symbol is collected on unless exchange and market are given)."""
        return await _result(tools.ohlcv(client, symbol.upper(), exchange, market, interval, limit))

    @tool(annotations=READ_ONLY)
    async def get_order_book(
        symbol: Symbol, exchange: Exchange = None, market: Market = None,
        depth: Annotated[int, Field(ge=1, le=100, description="levels per side listed")] = 10,
    ) -> Annotated[CallToolResult, m.Book]:
        """The live order book of one market: mid, spread, bid/ask imbalance within 0.1/0.5/1 % of mid, walls
        (levels ≥3× the median within 1 %) and the top levels."""
        return await _result(tools.book(client, symbol.upper(), exchange, market, depth))

    @tool(annotations=READ_ONLY)
    async def get_recent_trades(
        symbol: Symbol, exchange: Exchange = None, market: Market = None,
        window: Literal["1m", "5m", "15m", "1h"] = "5m",
        rows: Annotated[int, Field(ge=0, le=200, description="newest trades to list; 0 = summary only")] = 0,
    ) -> Annotated[CallToolResult, m.Trades]:
        """Trades of one market in the last window: count, volume, buy/sell, delta, VWAP, range, largest prints;
        the trades themselves only when rows > 0."""
        return await _result(tools.recent_trades(client, symbol.upper(), exchange, market, window, rows))

    @tool(annotations=READ_ONLY)
    async def get_volume_profile(
        symbol: Symbol, exchange: Exchange = None, market: Market = None,
        window: Literal["1h", "4h", "session", "24h", "3d", "7d"] = "24h",
        row_size: Annotated[float | None, Field(gt=0, description="row height in price units (a multiple of "
                                                                  "the tick); default chosen per symbol")] = None,
        value_area: Annotated[float, Field(ge=0.5, le=0.95)] = 0.7,
        rows: Annotated[int, Field(ge=0, le=200, description="rows around the POC to list; 0 = none")] = 0,
    ) -> Annotated[CallToolResult, m.Profile]:
        """Volume Profile: POC, VAH, VAL, HVN/LVN, volume and delta, naked POCs of earlier UTC days. `session` is
        the UTC day so far."""
        return await _result(analysis.volume_profile(client, symbol.upper(), exchange, market, window, row_size,
                                                     value_area, rows))

    @tool(annotations=READ_ONLY)
    async def get_order_flow(
        symbol: Symbol, exchange: Exchange = None, market: Market = None,
        large_notional: Annotated[float | None, Field(gt=0, description="quote value of a large trade; "
                                                                        "default per symbol")] = None,
    ) -> Annotated[CallToolResult, m.Flow]:
        """Order flow now: CVD since 00:00 UTC, the open 1m bar, delta over 5m/15m/1h/4h/24h, large trades,
        stacked imbalances and book imbalance per market."""
        return await _result(analysis.order_flow(client, symbol.upper(), exchange, market, large_notional))

    @tool(annotations=READ_ONLY)
    async def get_footprint(
        symbol: Symbol, exchange: Exchange = None, market: Market = None, interval: Interval = "5m",
        limit: Annotated[int, Field(ge=1, le=48, description="bars, newest last")] = 6,
        row_size: Annotated[float | None, Field(gt=0, description="row height in price units")] = None,
        imbalance_ratio: Annotated[float, Field(ge=1.5, le=10)] = 3.0,
        rows: Annotated[bool, Field(description="list every price row (bid x ask) of every bar")] = False,
    ) -> Annotated[CallToolResult, m.Footprint]:
        """Footprint bars: OHLC, volume, delta, CVD, the bar's POC, diagonal and stacked imbalances; the rows
        (buy x sell per price) only when asked."""
        return await _result(analysis.footprint(client, symbol.upper(), exchange, market, interval, limit, row_size,
                                                imbalance_ratio, rows))

    @tool(annotations=READ_ONLY)
    async def get_market_structure(
        symbol: Symbol, exchange: Exchange = None, market: Market = None, interval: Interval = "1h",
        swing: Annotated[int, Field(ge=1, le=10, description="bars each side that make a swing")] = 2,
        window: Annotated[Literal["6h", "24h", "3d", "7d"] | None, Field(description="default: 200 bars")] = None,
    ) -> Annotated[CallToolResult, m.Structure]:
        """Market structure at one interval: trend and bias, swings (HH/HL/LH/LL), BOS/CHoCH, the current range,
        key levels, Wyckoff candidates with their inputs, CVD divergences."""
        return await _result(analysis.market_structure(client, symbol.upper(), exchange, market, interval, swing,
                                                       window))

    @tool(annotations=READ_ONLY)
    async def get_data_gaps(
        symbol: Annotated[str | None, Field(pattern=r"^[A-Za-z0-9]{2,30}$", description="omit for every symbol")]
        = None,
        exchange: Exchange = None, market: Market = None,
        window: Literal["1h", "6h", "24h", "7d"] = "24h",
    ) -> Annotated[CallToolResult, m.Gaps]:
        """Known holes in the data (disconnects not backfilled, resyncs, outages), newest first."""
        return await _result(tools.data_gaps(client, symbol.upper() if symbol else None, exchange, market, window))

    @tool(annotations=READ_ONLY)
    async def get_wyckoff_context(symbol: Symbol, exchange: Exchange = None,
                                  market: Market = None) -> Annotated[CallToolResult, m.Context]:
        """The whole picture for a Wyckoff analysis in ONE call: trend, swings and breaks on 4h/1h/15m, the
        current ranges, session and 7-day POC/VAH/VAL and naked POCs, CVD and delta divergences, absorption and
        stacked-imbalance clusters, Wyckoff candidate events with their inputs, large trades, book imbalance and
        data completeness. Start here."""
        return await _result(analysis.wyckoff_context(client, symbol.upper(), exchange, market))

    @server.prompt(name="wyckoff_analysis", description="a Wyckoff analysis of one symbol with WADM's tools")
    def wyckoff_analysis(symbol: Annotated[str, Field(description="e.g. BTCUSDT")]) -> str:
        return PROMPT.format(symbol=symbol.upper())

    return server


PROMPT = """\
Do a Wyckoff analysis of {symbol} with the WADM tools.

1. Call get_status once: if streams of {symbol} are not live or there are gaps, say how that limits the analysis.
2. Call get_wyckoff_context("{symbol}"). From the 4h and 1h structure decide whether price is trending or in a
   trading range; if in a range, place it: accumulation or distribution, and the phase (A-E).
3. Test your reading against the evidence: where price sits against the session and 7-day value areas and the
   naked POCs; whether CVD confirms or diverges at the swings; absorption bars and stacked imbalances near the
   range edges; the Wyckoff candidates (spring, upthrust, climaxes) with their volume ratio and ATR multiple.
   They are candidates, not verdicts.
4. Drill down only where it decides the case: get_footprint around a candidate event, get_volume_profile with
   rows for the range, get_order_book for walls at a level, get_market_structure at another interval.
5. Conclude with the phase and its most likely next event, the level that would confirm it and the level that
   would invalidate it, and what in the data is missing or incomplete. Quote times in UTC and prices as given.
"""


_Scope = MutableMapping[str, Any]
_Asgi = Callable[[_Scope, Callable[[], Awaitable[_Scope]], Callable[[_Scope], Awaitable[None]]], Awaitable[None]]


class BearerToken:
    """ASGI middleware: every HTTP request needs ``Authorization: Bearer <token>`` (compared in
    constant time); 401 with a JSON error otherwise. Lifespan events pass through; anything else
    (a WebSocket) is closed."""

    def __init__(self, app: _Asgi, token: str) -> None:
        self.app = app
        self.expected = token.encode()

    async def __call__(self, scope: _Scope, receive: Callable[[], Awaitable[_Scope]],
                       send: Callable[[_Scope], Awaitable[None]]) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] == "http":
            given = [value.strip() for name, value in scope["headers"] if name == b"authorization"]
            token = given[0][7:].strip() if len(given) == 1 and given[0][:7].lower() == b"bearer " else b""
            if not hmac.compare_digest(token, self.expected):
                body = b'{"error":"unauthorized","message":"send Authorization: Bearer <WADM_MCP_TOKEN>"}'
                await send({"type": "http.response.start", "status": 401, "headers": [
                    (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b'Bearer realm="wadm-mcp"')]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port: a number 1-65535")
    return port


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _serve_http(server: MCPServer, host: str, port: int, token: str | None) -> None:
    """Streamable HTTP at ``/mcp``, behind ``token`` when one is set."""
    import uvicorn  # the SDK's own HTTP server (a dependency of ``mcp``)

    if not token and not _loopback(host):
        log.warning("LISTENING ON %s:%d WITHOUT WADM_MCP_TOKEN: anyone who can reach this port reads WADM through "
                    "this server (and its API key). Set WADM_MCP_TOKEN, or listen on 127.0.0.1 and use an SSH "
                    "tunnel", host, port)
    app: _Asgi = server.streamable_http_app(host=host)
    if token:
        app = BearerToken(app, token)
    uvicorn.run(app, host=host, port=port, log_level="warning")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``wadm mcp`` (and of ``wadm-mcp`` in the lightweight distribution)."""
    parser = argparse.ArgumentParser(prog="wadm mcp", description="MCP server over a WADM REST API "
                                     "(WADM_URL, WADM_API_KEY, WADM_CA_FILE; WADM_MCP_TOKEN for --http).")
    parser.add_argument("--url", default=os.environ.get("WADM_URL") or DEFAULT_URL,
                        help=f"the WADM API (default: $WADM_URL or {DEFAULT_URL})")
    parser.add_argument("--http", action="store_true", help="serve streamable HTTP instead of stdio")
    parser.add_argument("--host", default="127.0.0.1", help="--http: address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=_port, default=8930, help="--http: port (default 8930)")
    parser.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    # stdout carries the protocol under stdio: logs go to stderr only.
    logging.basicConfig(stream=sys.stderr, level=args.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    key = os.environ.get("WADM_API_KEY") or None
    client = WadmClient(args.url, key, ca_file=os.environ.get("WADM_CA_FILE") or None)
    server = build_server(client)
    log.info("serving WADM at %s over %s (key %s)", client.url, "HTTP" if args.http else "stdio",
             "set" if key else "not set")
    if args.http:
        token = os.environ.get("WADM_MCP_TOKEN", "").strip() or None
        if token is not None and len(token) < 16:
            parser.error("WADM_MCP_TOKEN must be at least 16 characters (e.g. openssl rand -hex 32)")
        _serve_http(server, args.host, args.port, token)
    else:
        server.run("stdio")
    return 0
