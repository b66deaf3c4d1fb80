"""``wadm mcp`` end to end: a real ``wadm run`` collecting from the emulator with API keys, and the
MCP server reading it over HTTP through the SDK's own clients: in memory, over stdio (the transport
Claude Desktop uses, a subprocess) and over streamable HTTP (another subprocess).

Every tool is called; with the emulator's market paused the answers must equal what the REST API
says. Bad arguments, unknown symbols, a wrong key and a WADM that stops mid-session come back as
tool errors the model can act on, and the session goes on.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult

from tests.caddy import caddy_proxy
from tests.conftest import free_port
from tests.procs import Proc, emulator, start, stop, wadm, wait_for
from wadm.mcp.client import WadmClient
from wadm.mcp.server import build_server

pytestmark = pytest.mark.e2e

with warnings.catch_warnings():
    # bpe-openai reads its bundled vocabulary with a deprecated importlib call
    warnings.simplefilter("ignore", DeprecationWarning)
    import bpe_openai

    TOKENS = bpe_openai.get_encoding("o200k_base")

KEY = "mcp-test-key-0123456789abcdef"
TOOLS = {
    "list_markets": {}, "get_status": {}, "get_price": {"symbol": "BTCUSDT"},
    "get_ohlcv": {"symbol": "BTCUSDT", "exchange": "binance", "market": "spot", "interval": "1m", "limit": 5},
    "get_order_book": {"symbol": "BTCUSDT", "exchange": "bybit", "market": "linear", "depth": 5},
    "get_recent_trades": {"symbol": "ETHUSDT", "rows": 3}, "get_volume_profile": {"symbol": "BTCUSDT"},
    "get_order_flow": {"symbol": "BTCUSDT"}, "get_footprint": {"symbol": "BTCUSDT", "interval": "1m"},
    "get_market_structure": {"symbol": "BTCUSDT", "interval": "1m"}, "get_data_gaps": {"symbol": "BTCUSDT"},
    "get_wyckoff_context": {"symbol": "BTCUSDT"},
}
BAD_CALLS = [
    ("get_ohlcv", {"symbol": "BTCUSDT", "interval": "2m"}, "interval"),
    ("get_order_book", {"symbol": "BTCUSDT", "depth": 0}, "depth"),
    ("get_price", {"symbol": "BTC/USDT"}, "symbol"),
    ("get_volume_profile", {"symbol": "BTCUSDT", "exchange": "kraken"}, "exchange"),
    ("get_price", {"symbol": "DOGEUSDT"}, "ETHUSDT (binance spot)"),
    ("get_ohlcv", {"symbol": "ETHUSDT", "market": "usdm"}, "ETHUSDT is not collected on usdm"),
]


@dataclass
class Setup:
    api: str
    app: Proc
    emu_port: int

    def rest(self, path: str, **params: Any) -> dict[str, Any]:
        r = httpx.get(self.api + path, params=params, headers={"X-API-Key": KEY}, timeout=30)
        assert r.status_code == 200, (path, r.text[:300])
        body: dict[str, Any] = r.json()
        return body

    def control(self, action: str) -> None:
        httpx.get(f"http://127.0.0.1:{self.emu_port}/control/{action}", timeout=10).raise_for_status()


def _env(emu_port: int, data: Path) -> dict[str, str]:
    e = f"127.0.0.1:{emu_port}"
    return {
        "BINANCE_SYMBOLS": "BTCUSDT,ETHUSDT", "BINANCE_USDM_SYMBOLS": "", "BYBIT_SYMBOLS": "BTCUSDT",
        "BYBIT_SPOT_SYMBOLS": "", "COLLECTORS_START_DELAY": "0", "WADM_DATA_DIR": str(data), "WADM_API_KEYS": KEY,
        "WADM_RATE_LIMIT": "0",
        "WADM_BINANCE_SPOT_WS_URL": f"ws://{e}/binance/spot", "WADM_BINANCE_SPOT_REST_URL": f"http://{e}/binance/spot",
        "WADM_BINANCE_USDM_WS_URL": f"ws://{e}/binance/usdm", "WADM_BINANCE_USDM_REST_URL": f"http://{e}/binance/usdm",
        "WADM_BYBIT_WS_URL": f"ws://{e}/bybit", "WADM_BYBIT_REST_URL": f"http://{e}/bybit",
    }


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    data = tmp_path_factory.mktemp("mcp")
    with emulator("--symbols", "BTCUSDT,ETHUSDT", "--rate", "40", "--book", "on", "--bybit-markets", "linear",
                  "--bybit-symbols", "BTCUSDT") as (_, emu_port):
        port = free_port()
        with wadm("run", _env(emu_port, data), port) as app:
            s = Setup(f"http://127.0.0.1:{port}", app, emu_port)
            wait_for(lambda: httpx.get(f"{s.api}/health", headers={"X-API-Key": KEY}, timeout=10).status_code == 200,
                     60, "every stream to be live", app)
            wait_for(lambda: s.rest("/api/v1/order-flow/current/BTCUSDT")["price"] is not None, 30, "trades", app)
            wait_for(lambda: httpx.get(f"{s.api}/api/v1/volume-profile/BTCUSDT", headers={"X-API-Key": KEY},
                                       timeout=10).status_code == 200, 100, "the first closed minute", app)
            yield s


def _stdio(api: str, key: str = KEY, **env: str) -> StdioServerParameters:
    return StdioServerParameters(command=sys.executable, args=["-m", "wadm", "mcp"],
                                 env={"WADM_URL": api, "WADM_API_KEY": key, "PATH": "/usr/bin:/bin", **env})


async def _call(client: Client, name: str, args: dict[str, Any]) -> CallToolResult:
    return await client.call_tool(name, args)


def _text(result: CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if c.type == "text")


async def _every_tool(client: Client) -> dict[str, CallToolResult]:
    listed = await client.list_tools()
    assert {t.name for t in listed.tools} == set(TOOLS)
    for t in listed.tools:
        assert t.annotations is not None and t.annotations.read_only_hint is True, t.name
        assert t.output_schema is not None, f"{t.name} has no typed result"
    answers = {}
    for name, args in TOOLS.items():
        result = await _call(client, name, args)
        assert not result.is_error, (name, _text(result))
        assert result.structured_content and _text(result), name
        answers[name] = result
    for name, args, needle in BAD_CALLS:
        result = await _call(client, name, args)
        assert result.is_error, (name, args)
        assert needle in _text(result), (name, _text(result))
    prompt = await client.get_prompt("wyckoff_analysis", {"symbol": "btcusdt"})
    assert "get_wyckoff_context(\"BTCUSDT\")" in prompt.messages[0].content.text  # type: ignore[union-attr]
    return answers


def test_every_tool_in_memory_equals_the_rest_api(setup: Setup) -> None:
    s = setup
    s.control("pause")
    try:
        # What was on the wire when the market paused arrives (the emulator's Binance klines update
        # the open bar every 2 s), and no minute turns during the comparison (a new kline would).
        time.sleep(3)
        if time.time() % 60 > 40:
            time.sleep(63 - time.time() % 60)
        wait_for(lambda: s.rest("/health")["store"]["pending_rows"] == 0, 10, "the writer to catch up", s.app)

        async def run() -> dict[str, CallToolResult]:
            wadm_client = WadmClient(s.api, KEY)
            try:
                async with Client(build_server(wadm_client)) as client:
                    return await _every_tool(client)
            finally:
                await wadm_client.aclose()

        answers = asyncio.run(run())
        got = {k: v.structured_content or {} for k, v in answers.items()}
        _check_against_rest(s, got)
        for name, result in answers.items():
            structured = json.dumps(result.structured_content, separators=(",", ":"), ensure_ascii=False)
            for form, text in (("text", _text(result)), ("structured content", structured)):
                assert len(TOKENS.encode(text)) <= 1500, f"{name}'s {form} is over the model's token budget"
            # every time in ISO-8601 UTC ("CVD since 00:00 UTC" aside)
            for clock in re.finditer(r"\d\d:\d\d(?! UTC)", _text(result)):
                assert re.fullmatch(r"\d{4}-\d\d-\d\dT", _text(result)[clock.start() - 11:clock.start()]), \
                    (name, _text(result)[max(0, clock.start() - 20):clock.end() + 5])
    finally:
        s.control("resume")


def _check_against_rest(s: Setup, got: dict[str, dict[str, Any]]) -> None:
    symbols = s.rest("/api/v1/symbols")["symbols"]
    assert [(m["symbol"], m["exchange"], m["market"], m["tick"], m["lot"]) for m in got["list_markets"]["markets"]] \
        == [(m["symbol"], m["exchange"], m["market"], m["tick_size"], m["lot_size"]) for m in symbols]

    health = s.rest("/health")
    assert got["get_status"]["live"] == sum(x["state"] == "live" for x in health["streams"]) == len(health["streams"])

    for row in got["get_price"]["markets"]:
        exchange, market = row["market"].split()
        flow = s.rest("/api/v1/order-flow/current/BTCUSDT", exchange=exchange, market=market)
        book = s.rest("/api/v1/orderbook/BTCUSDT", exchange=exchange, market=market, depth=1)
        assert row["last"] == flow["price"] and row["mid"] == book["mid"], row
        assert row["volume_1h"] == pytest.approx(flow["windows"]["1h"]["volume"], abs=1e-3)
    assert len(got["get_price"]["markets"]) == 2

    klines = s.rest("/api/v1/klines/BTCUSDT", exchange="binance", market="spot", interval="1m", limit=5)["klines"]
    assert [r[1:] for r in got["get_ohlcv"]["rows"]] == [
        [k["open"], k["high"], k["low"], k["close"], pytest.approx(k["volume"], abs=1e-5)] for k in klines]

    book = s.rest("/api/v1/orderbook/BTCUSDT", exchange="bybit", market="linear", depth=5)
    assert got["get_order_book"]["bids"] == book["bids"] and got["get_order_book"]["asks"] == book["asks"]
    assert got["get_order_book"]["imbalance"]["0.5%"] == round(book["bands"]["imbalance_0.5pct"], 3)

    trades = s.rest("/api/v1/trades/ETHUSDT", window="5m", limit=10_000)
    answer = got["get_recent_trades"]
    assert answer["count"] == trades["count"] and len(answer["rows"]) == 3
    assert answer["volume"] == pytest.approx(sum(t["qty"] for t in trades["trades"]), abs=1e-5)
    assert [r["price"] for r in answer["rows"]] == [t["price"] for t in trades["trades"][-3:]]

    profile = s.rest("/api/v1/volume-profile/BTCUSDT", window="24h")
    answer = got["get_volume_profile"]
    assert (answer["poc"], answer["vah"], answer["val"]) == (profile["poc"], profile["vah"], profile["val"])
    assert answer["total_volume"] == pytest.approx(profile["total_volume"], abs=1e-3)

    flow = s.rest("/api/v1/order-flow/current/BTCUSDT")
    assert got["get_order_flow"]["price"] == flow["price"]
    assert got["get_order_flow"]["cvd"] == pytest.approx(flow["cvd"], abs=1e-3)
    assert got["get_wyckoff_context"]["price"] == flow["price"]

    footprint = s.rest("/api/v1/order-flow/BTCUSDT/footprint", interval="1m", limit=6)
    assert [b["volume"] for b in got["get_footprint"]["bars"]] == pytest.approx(
        [b["volume"] for b in footprint["bars"]], abs=1e-3)

    structure = s.rest("/api/v1/market-structure/BTCUSDT", interval="1m")
    assert (got["get_market_structure"]["trend"], got["get_market_structure"]["close"]) == \
        (structure["trend"], structure["close"])

    gaps = s.rest("/api/v1/gaps", symbol="BTCUSDT", window="24h")
    assert got["get_data_gaps"]["count"] == gaps["count"]

    session = s.rest("/api/v1/volume-profile/BTCUSDT", start=flow["ts"] - flow["ts"] % 86_400_000)
    assert got["get_wyckoff_context"]["value"]["session"]["poc"] == session["poc"]
    assert got["get_wyckoff_context"]["unavailable"] == {}


def test_every_tool_over_stdio_and_a_wrong_key(setup: Setup) -> None:
    async def run() -> None:
        async with Client(_stdio(setup.api)) as client:
            await _every_tool(client)
        async with Client(_stdio(setup.api, key="not-the-key-0123456789")) as client:
            result = await client.call_tool("list_markets", {})
            assert result.is_error and "WADM_API_KEY" in _text(result)

    asyncio.run(run())


def test_every_tool_over_streamable_http(setup: Setup) -> None:
    port = free_port()
    proc = start(["mcp", "--http", "--port", str(port)], {"WADM_URL": setup.api, "WADM_API_KEY": KEY})
    try:
        wait_for(lambda: _listening(port), 30, "wadm mcp --http to listen", proc)

        async def run() -> None:
            async with Client(f"http://127.0.0.1:{port}/mcp") as client:
                await _every_tool(client)

        asyncio.run(run())
    finally:
        stop(proc)
    assert KEY not in proc.output, "the key reached the log"


def test_streamable_http_behind_a_token(setup: Setup) -> None:
    port, token = free_port(), "mcp-token-" + "7" * 24
    proc = start(["mcp", "--http", "--host", "127.0.0.1", "--port", str(port)],
                 {"WADM_URL": setup.api, "WADM_API_KEY": KEY, "WADM_MCP_TOKEN": token})
    try:
        wait_for(lambda: _listening(port), 30, "wadm mcp --http to listen", proc)
        url = f"http://127.0.0.1:{port}/mcp"
        for headers in ({}, {"Authorization": "Bearer wrong-token-0000000000"}, {"Authorization": token},
                        {"Authorization": f"Basic {token}"}):
            refused = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers=headers, timeout=5)
            assert refused.status_code == 401 and refused.json()["error"] == "unauthorized", headers
            assert refused.headers["www-authenticate"].startswith("Bearer")
        past = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, timeout=5,
                          headers={"Authorization": f"bearer  {token}"})  # any case and spacing, as WADM's keys
        assert past.status_code != 401, past.text

        async def run() -> None:
            http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"})
            async with http, Client(streamable_http_client(url, http_client=http)) as client:
                answer = await client.call_tool("list_markets", {})
                assert not answer.is_error and answer.structured_content is not None

        asyncio.run(run())
    finally:
        stop(proc)
    assert token not in proc.output and KEY not in proc.output, "a secret reached the log"


def test_listening_beyond_this_machine_without_a_token_is_warned_about(setup: Setup) -> None:
    port = free_port()
    proc = start(["mcp", "--http", "--host", "0.0.0.0", "--port", str(port)], {"WADM_URL": setup.api})
    try:
        wait_for(lambda: _listening(port), 30, "wadm mcp --http to listen", proc)
    finally:
        stop(proc)
    assert "WITHOUT WADM_MCP_TOKEN" in proc.output


def test_bad_http_settings_are_refused_naming_them() -> None:
    for args, env, said in ((["--port", "70000"], {}, "a number 1-65535"),
                            ([], {"WADM_MCP_TOKEN": "short"}, "WADM_MCP_TOKEN must be at least 16")):
        proc = start(["mcp", "--http", *args], env)
        assert proc.popen.wait(30) == 2
        stop(proc)
        assert said in proc.output, proc.output


def _listening(port: int) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}/mcp", timeout=2)
    except httpx.HTTPError:
        return False
    return True


def test_get_status_of_a_wadm_whose_streams_are_all_down(tmp_path: Path) -> None:
    """/health answers 503 when streams are down: get_status reports it, within the token budget."""
    port, dead = free_port(), f"127.0.0.1:{free_port()}"
    api = f"http://127.0.0.1:{port}"
    env = {"WADM_DATA_DIR": str(tmp_path / "data"), "WADM_API_KEYS": KEY, "COLLECTORS_START_DELAY": "0",
           **{f"WADM_{v}_WS_URL": f"ws://{dead}/x" for v in ("BINANCE_SPOT", "BINANCE_USDM", "BYBIT")},
           **{f"WADM_{v}_REST_URL": f"http://{dead}/x" for v in ("BINANCE_SPOT", "BINANCE_USDM", "BYBIT")}}

    async def run() -> CallToolResult:
        wadm_client = WadmClient(api, KEY)
        try:
            async with Client(build_server(wadm_client)) as client:
                return await client.call_tool("get_status", {})
        finally:
            await wadm_client.aclose()

    with wadm("run", env, port) as app:
        wait_for(lambda: httpx.get(f"{api}/health", headers={"X-API-Key": KEY}, timeout=10).json()["status"]
                 == "degraded", 30, "the collectors to start and fail", app)
        health = httpx.get(f"{api}/health", headers={"X-API-Key": KEY}, timeout=10)
        result = asyncio.run(run())
    assert health.status_code == 503
    assert not result.is_error, _text(result)
    got = result.structured_content or {}
    streams = health.json()["streams"]
    assert got["status"] == "degraded" and got["streams"] == len(streams) >= 20
    assert got["live"] == 0 and got["not_live"] == len(streams) and 0 < len(got["problems"]) < len(streams)
    assert "0/" in _text(result) and "more" in _text(result)
    structured = json.dumps(result.structured_content, separators=(",", ":"), ensure_ascii=False)
    for form, text in (("text", _text(result)), ("structured content", structured)):
        assert len(TOKENS.encode(text)) <= 1500, f"get_status's {form} is over the model's token budget"


def test_a_wadm_that_stops_mid_session_gives_a_tool_error_and_the_session_goes_on(tmp_path: Path) -> None:
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    env = {"BINANCE_SYMBOLS": "BTCUSDT", "BINANCE_USDM_SYMBOLS": "", "BYBIT_SYMBOLS": "", "BYBIT_SPOT_SYMBOLS": "",
           "WADM_DATA_DIR": str(tmp_path / "data"), "WADM_API_KEYS": KEY}

    async def run() -> None:
        with wadm("serve", env, port) as served:
            async with Client(_stdio(api)) as client:
                assert not (await client.call_tool("list_markets", {})).is_error
                stop(served)
                down = await client.call_tool("get_volume_profile", {"symbol": "BTCUSDT"})
                assert down.is_error and f"WADM is unreachable at {api}" in _text(down), _text(down)
                assert (await client.call_tool("get_data_gaps", {})).is_error
                with wadm("serve", env, port):
                    again = await client.call_tool("get_data_gaps", {"symbol": "BTCUSDT"})
                    assert not again.is_error, _text(again)
                    empty = await client.call_tool("get_order_book", {"symbol": "BTCUSDT"})
                    assert empty.is_error and "503" in _text(empty), "serve has no live book: said, not crashed"

    asyncio.run(run())


def test_wadm_mcp_reaches_wadm_through_caddy_over_https_with_a_key(setup: Setup) -> None:
    """The remote set-up: Caddy (deploy/Caddyfile, its local CA here) in front of WADM."""
    port = int(setup.api.rsplit(":", 1)[1])
    with caddy_proxy(port) as (url, ca_file):
        assert url.startswith("https://")

        async def run() -> None:
            async with Client(_stdio(url, WADM_CA_FILE=str(ca_file))) as client:
                markets = await client.call_tool("list_markets", {})
                assert not markets.is_error, _text(markets)
                flow = await client.call_tool("get_order_flow", {"symbol": "BTCUSDT"})
                assert not flow.is_error and (flow.structured_content or {})["price"] is not None, _text(flow)
            async with Client(_stdio(url, key="not-the-key-0123456789", WADM_CA_FILE=str(ca_file))) as client:
                refused = await client.call_tool("list_markets", {})
                assert refused.is_error and "WADM_API_KEY" in _text(refused)
            async with Client(_stdio(url)) as client:  # Caddy's local CA is not trusted without WADM_CA_FILE
                untrusted = await client.call_tool("list_markets", {})
                assert untrusted.is_error and "CERTIFICATE_VERIFY_FAILED" in _text(untrusted), _text(untrusted)

        asyncio.run(run())
