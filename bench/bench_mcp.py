"""The MCP server: tokens per tool answer, and ``get_wyckoff_context`` end to end.

A plain script (it runs real processes for a few minutes): ``uv run python bench/bench_mcp.py``.

1. Starts the exchange emulator with the deployment's default symbols on all four markets
   (8 series, books on, ``RATE`` trades/s each) and fills the store with what a service running
   for a week would hold for every one of those series: 1h bars for 7 days, 1m bars (with
   footprints) for the last 23 hours and the raw trades of the last ``RAW_S`` seconds, built the
   way the service builds them (``build_bars`` -> ``chain_cvd`` -> ``hour_bars``) from a random
   walk that ends at the emulator's price of each series, on its tick and lot.
2. Starts ``wadm run`` (default settings, embedded store, API keys set) against the emulator and
   waits until every stream is live and one minute has closed from live trades.
3. Starts ``wadm mcp`` as a stdio subprocess (the transport Claude Desktop uses) and calls every
   tool with its default arguments for every default symbol. Each answer's text (what the model
   reads) and its structured content (compact JSON) are counted with the ``o200k_base`` BPE of
   ``bpe-openai``, whose vocabulary ships inside the package. Target: every default answer
   <= 1,500 tokens.
4. Times ``CALLS`` calls of ``get_wyckoff_context`` per default symbol, 1.5 s apart as a model
   would make them, from the SDK client's call to its result (stdio framing, the MCP server, its 8
   REST calls to WADM and WADM's analytics over 24 h of 1m bars and 7 days of 1h bars), then
   ``CALLS`` for BTCUSDT back to back; as the baseline of the same run, ``list_markets`` (an MCP
   round trip; its listing is cached by the server). Target: p50 and p99 of
   ``get_wyckoff_context`` <= 300 ms. Nothing here asserts on time.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import bpe_openai
import httpx
import orjson
import polars as pl
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from bench.bench_analytics import tape
from bench.bench_api import _env
from bench.conftest import machine
from tests.conftest import free_port
from tests.procs import emulator, wadm, wait_for
from wadm.analytics.aggregates import build_bars, chain_cvd, hour_bars
from wadm.analytics.grid import Grid, default_row
from wadm.config import DEFAULT_SYMBOLS
from wadm.records import BARS_1H, BARS_1M, TRADE_SCHEMA_INT_ID, TRADES, BatchKey, Market, Venue
from wadm.store import SqliteStore, encode_batch

RATE = float(os.environ.get("WADM_BENCH_MCP_RATE", "50"))
RAW_S = int(os.environ.get("WADM_BENCH_MCP_RAW_S", "300"))
CALLS = int(os.environ.get("WADM_BENCH_MCP_CALLS", "30"))
GAP_S = 1.5  # seconds between two timed calls
TRADES_7D = 150_000  # trades of the sparse week per series: enough for realistic hourly footprints
KEY = "bench-key-0123456789abcdef"
BUDGET = 1500
_NS = 1_000_000_000
MIN = 60 * _NS
HOUR = 60 * MIN
DAY = 24 * HOUR
DEFAULT_ARGS: dict[str, dict[str, Any]] = {
    "list_markets": {}, "get_status": {}, "get_price": {}, "get_ohlcv": {}, "get_order_book": {},
    "get_recent_trades": {}, "get_volume_profile": {}, "get_order_flow": {}, "get_footprint": {},
    "get_market_structure": {}, "get_data_gaps": {}, "get_wyckoff_context": {},
}
NO_SYMBOL = {"list_markets", "get_status", "get_data_gaps"}


def _places(step: float) -> int:
    text = f"{step:.10f}".rstrip("0")
    return len(text.split(".")[1]) if "." in text else 0


def _series_tape(now: int, tick: float, lot: float, price: float, seed: int) -> pl.DataFrame:
    """A week of trades ending at ``price``: sparse, then ``RATE``/s over the last ``RAW_S`` s."""
    sparse = tape(TRADES_7D, 7 * DAY - RAW_S * _NS, start=now - 7 * DAY, seed=seed)
    dense = tape(int(RATE * RAW_S), RAW_S * _NS, start=now - RAW_S * _NS, seed=seed + 100)
    walk = pl.concat([sparse, dense.with_columns(pl.col("price") * (sparse["price"][-1] / dense["price"][0]))])
    scale = price / float(walk["price"][-1])
    return walk.with_columns(
        ts_recv=pl.col("ts_event") + 3_000_000,
        id=pl.int_range(1, walk.height + 1, dtype=pl.Int64),
        price=(((pl.col("price") * scale) / tick).round(0) * tick).round(_places(tick)),
        qty=((pl.col("qty") * 10 / lot).round(0).clip(lower_bound=1) * lot).round(_places(lot)),
    ).cast(TRADE_SCHEMA_INT_ID)  # type: ignore[arg-type]


async def prefill(db: Path, now: int, listing: list[dict[str, Any]], prices: dict[tuple[str, str, str], float]
                  ) -> dict[str, int]:
    store = SqliteStore(db)
    await store.open()
    counts = {"series": 0, "trades": 0, "bars_1m": 0, "bars_1h": 0}
    try:
        for i, row in enumerate(listing):
            venue, market, symbol = Venue(row["exchange"]), Market(row["market"]), row["symbol"]
            tick, lot = row["tick_size"], row["lot_size"]
            price = prices[(row["exchange"], row["market"], symbol)]
            trades = _series_tape(now, tick, lot, price, seed=11 + i)
            grid = Grid(tick, float(default_row(tick, price)))
            minutes = chain_cvd(build_bars(trades, MIN, grid=grid, revision=1, lot=lot))
            hours = hour_bars(minutes, HOUR, revision=2)
            raw = trades.filter(pl.col("ts_event") >= now - RAW_S * _NS)
            recent = minutes.filter(pl.col("ts_event") >= now - 23 * HOUR)
            for table, frame, size in ((TRADES, raw, 1000), (BARS_1M, recent, 60), (BARS_1H, hours, 24)):
                for first in range(0, frame.height, size):
                    await store.write(BatchKey(table, venue, market, symbol), encode_batch(frame.slice(first, size)))
            counts["series"] += 1
            counts["trades"] += raw.height
            counts["bars_1m"] += recent.height
            counts["bars_1h"] += hours.height
    finally:
        await store.close()
    return counts


def _emulator_listing(emu_port: int) -> tuple[list[dict[str, Any]], dict[tuple[str, str, str], float]]:
    """Tick, lot and current price of every default series, as the emulator's venues publish them."""
    listing, prices = [], {}
    base = f"http://127.0.0.1:{emu_port}"
    for (venue, market), symbols in DEFAULT_SYMBOLS.items():
        for symbol in symbols:
            book = httpx.get(f"{base}/control/book", params={"venue": str(venue), "market": str(market),
                                                             "symbol": symbol, "depth": 1}, timeout=10).json()
            mid = (float(book["bids"][0][0]) + float(book["asks"][0][0])) / 2
            prices[(str(venue), str(market), symbol)] = mid
            listing.append({"exchange": str(venue), "market": str(market), "symbol": symbol})
    return listing, prices


def _text(result: Any) -> str:
    return "\n".join(c.text for c in result.content if c.type == "text")


async def measure(api: str) -> tuple[list[tuple[str, str, int, int, bool]], dict[str, list[float]]]:
    enc = bpe_openai.get_encoding("o200k_base")
    params = StdioServerParameters(command=sys.executable, args=["-m", "wadm", "mcp"],
                                   env={"WADM_URL": api, "WADM_API_KEY": KEY, "PATH": "/usr/bin:/bin"})
    symbols = sorted({s for group in DEFAULT_SYMBOLS.values() for s in group})
    tokens: list[tuple[str, str, int, int, bool]] = []
    times: dict[str, list[float]] = {}
    async with Client(params) as client:
        for name, args in DEFAULT_ARGS.items():
            for symbol in ([None] if name in NO_SYMBOL else symbols):
                result = await client.call_tool(name, args | ({"symbol": symbol} if symbol else {}))
                text = _text(result)
                structured = orjson.dumps(result.structured_content).decode() if result.structured_content else ""
                tokens.append((name, symbol or "-", len(enc.encode(text)), len(enc.encode(structured)),
                               bool(result.is_error)))
                if result.is_error:
                    print(f"  {name} {symbol}: ERROR {text[:300]}", flush=True)
        for symbol in symbols:
            # A model calls a tool every few seconds at most: each call finds nothing WADM loaded for
            # an earlier one (it keeps loaded bars for LOADED_REUSE_NS, 1 s).
            for name, args in (("list_markets", {}), ("get_wyckoff_context", {"symbol": symbol})):
                label = f"{name} {symbol}" if name != "list_markets" else name
                for _ in range(CALLS):
                    await asyncio.sleep(GAP_S)
                    t = time.perf_counter()
                    result = await client.call_tool(name, args)
                    times.setdefault(label, []).append(time.perf_counter() - t)
                    assert not result.is_error, _text(result)
        for _ in range(CALLS):  # and back to back, as a script polling it would
            t = time.perf_counter()
            await client.call_tool("get_wyckoff_context", {"symbol": "BTCUSDT"})
            times.setdefault("get_wyckoff_context BTCUSDT, back to back", []).append(time.perf_counter() - t)
        example = _text(await client.call_tool("get_wyckoff_context", {"symbol": "BTCUSDT"}))
    # Where the context's time goes: each of its REST calls alone, 1.5 s apart.
    day = time.time_ns() // DAY * DAY // 1_000_000
    parts = {"market-structure 4h 7d": "/api/v1/market-structure/BTCUSDT?interval=4h&window=7d",
             "market-structure 1h 7d": "/api/v1/market-structure/BTCUSDT?interval=1h&window=7d",
             "market-structure 15m 24h": "/api/v1/market-structure/BTCUSDT?interval=15m&window=24h",
             "volume-profile session": f"/api/v1/volume-profile/BTCUSDT?start={day}",
             "volume-profile 7d": "/api/v1/volume-profile/BTCUSDT?window=7d",
             "order-flow/current": "/api/v1/order-flow/current/BTCUSDT",
             "footprint 15m x16": "/api/v1/order-flow/BTCUSDT/footprint?interval=15m&limit=16",
             "gaps 24h": "/api/v1/gaps?symbol=BTCUSDT&window=24h"}
    async with httpx.AsyncClient(base_url=api, headers={"X-API-Key": KEY}, timeout=60) as http:
        for label, path in parts.items():
            for _ in range(10):
                await asyncio.sleep(GAP_S)  # nothing shared from the call before
                t = time.perf_counter()
                (await http.get(path)).raise_for_status()
                times.setdefault(f"REST {label} (BTCUSDT, alone)", []).append(time.perf_counter() - t)
    print("\nget_wyckoff_context(BTCUSDT), as the model reads it:\n" + example, flush=True)
    return tokens, times


def _q(xs: list[float], q: float) -> float:
    ys = sorted(xs)
    return ys[min(len(ys) - 1, int(q * len(ys)))]


def report(tokens: list[tuple[str, str, int, int, bool]], times: dict[str, list[float]]) -> None:
    print("\n| tool | symbols | text tokens, max (symbol) | structured tokens, max | errors | within 1,500 |")
    print("|---|---|---|---|---|---|")
    for name in DEFAULT_ARGS:
        rows = [t for t in tokens if t[0] == name]
        worst = max(rows, key=lambda t: t[2])
        structured = max(t[3] for t in rows)
        errors = sum(t[4] for t in rows)
        ok = worst[2] <= BUDGET and structured <= BUDGET
        verdict = "yes" if ok else "NO"
        print(f"| `{name}` | {len(rows)} | {worst[2]} ({worst[1]}) | {structured} | {errors} | {verdict} |")
    base = times.pop("list_markets")
    b50 = statistics.median(base)
    print(f"\n| call ({CALLS} each, stdio) | p50 ms | p90 ms | p99 ms | max ms | p50 / list_markets p50 |")
    print("|---|---|---|---|---|---|")
    for label, xs in {"list_markets (baseline)": base, **times}.items():
        p50 = statistics.median(xs)
        print(f"| `{label}` | {p50 * 1e3:.1f} | {_q(xs, 0.9) * 1e3:.1f} | {_q(xs, 0.99) * 1e3:.1f} | "
              f"{max(xs) * 1e3:.1f} | {p50 / b50:.1f} |")


def main() -> int:
    print(machine(), flush=True)
    with tempfile.TemporaryDirectory(prefix="wadm-bench-mcp-") as tmp:
        data = Path(tmp)
        emu_args = ("--symbols", "BTCUSDT,ETHUSDT,XRPUSDT", "--markets", "spot,usdm", "--bybit-markets", "spot,linear",
                    "--bybit-symbols", "BTCUSDT,ETHUSDT,SOLUSDT", "--rate", f"{RATE:g}", "--book", "on", "--seed", "1")
        with emulator(*emu_args) as (_, emu_port):
            listing, prices = _emulator_listing(emu_port)
            port = free_port()
            api = f"http://127.0.0.1:{port}"
            headers = {"X-API-Key": KEY}
            env = _env(emu_port, data) | {"WADM_API_KEYS": KEY, "WADM_RATE_LIMIT": "0"}
            # First a short run (its own store) to learn the venues' ticks and lots as WADM reads them.
            with wadm("run", env | {"WADM_DATA_DIR": str(data / "first")}, port, cwd=data) as app:
                wait_for(lambda: httpx.get(api + "/health", timeout=10).status_code == 200, 120, "live", app)
                symbols = httpx.get(api + "/api/v1/symbols", headers=headers, timeout=10).json()["symbols"]
            by = {(s["exchange"], s["market"], s["symbol"]): s for s in symbols}
            listing = [by[(r["exchange"], r["market"], r["symbol"])] for r in listing]
            now = time.time_ns() // MIN * MIN
            t = time.perf_counter()
            counts = asyncio.run(prefill(data / "wadm.db", now, listing, prices))
            print(f"store filled in {time.perf_counter() - t:.0f} s: {counts}", flush=True)
            with wadm("run", env, port, cwd=data) as app:
                wait_for(lambda: httpx.get(api + "/health", timeout=10).status_code == 200, 120, "live", app)
                minute = time.time_ns() // MIN * MIN + MIN
                wait_for(lambda: time.time_ns() > minute + 5 * _NS, 80, "a minute closed from live trades")
                tokens, times = asyncio.run(measure(api))
    report(tokens, times)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
