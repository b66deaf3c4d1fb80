"""The analytics endpoints over real HTTP: ``wadm serve`` under Granian reading a store we filled,
the embedded store and MongoDB in turn.

The store holds what a running service would have stored for BTCUSDT on Binance spot and USD-M
over seven days of a synthetic rising market: raw trades for the last 55 minutes, 1m bars for
the last 23 hours and 1h bars for the whole week, all built from one tape, plus a recorded trade
gap and indicator snapshots. Answers are checked against the analytics computed directly on
that tape, so a window answered from bars must equal the one answered from trades.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import httpx
import polars as pl
import pytest

from tests.conftest import free_port
from tests.mongo import scratch_database, with_database
from tests.procs import wadm
from wadm.analytics.aggregates import build_bars, chain_cvd, day_snapshot, hour_bars
from wadm.analytics.bars import NS_PER_DAY, trade_bars
from wadm.analytics.grid import Grid
from wadm.analytics.profile import combine, rows_from_trades, volume_profile
from wadm.records import (
    BARS_1H,
    BARS_1M,
    GAP_SCHEMA,
    GAPS,
    INDICATORS,
    TRADE_SCHEMA_INT_ID,
    TRADES,
    BatchKey,
    Market,
    Venue,
)
from wadm.store import Store, encode_batch, make_store

MS = 1_000_000
S = 1000 * MS
MIN = 60 * S
HOUR = 60 * MIN
NOW = time.time_ns() // MIN * MIN  # the tape ends here; requests come a little later
SPOT = (Venue.BINANCE, Market.SPOT, 0.01, 20.0)  # venue, market, tick, footprint row
USDM = (Venue.BINANCE, Market.USDM, 0.1, 50.0)
GAP = (NOW - 20 * MIN + 10 * S, NOW - 20 * MIN + 40 * S)  # a recorded gap in the spot trades


def _price(t: int, tick: float, rng: random.Random) -> float:
    """A rising market that swings: +40 an hour, a 600-wide zigzag with a 10-hour period."""
    hours = (t - (NOW - 7 * 24 * HOUR)) / HOUR
    phase = (hours % 10) / 10
    zig = 600 * (phase * 2 if phase < 0.5 else 2 - phase * 2)
    raw = 60_000 + 40 * hours + zig + rng.uniform(-15, 15)
    return round(round(raw / tick) * tick, 2)


def _tape(venue: Venue, market: Market, tick: float, every_s: int) -> pl.DataFrame:
    rng = random.Random(f"{venue}{market}")
    start = NOW - 7 * 24 * HOUR
    ts = list(range(start + rng.randrange(every_s) * S, NOW, every_s * S))
    return pl.DataFrame({
        "ts_event": ts,
        "ts_recv": [t + 3 * MS for t in ts],
        "id": range(1, len(ts) + 1),
        "price": [_price(t, tick, rng) for t in ts],
        "qty": [rng.randrange(1, 2000) / 1000 for _ in ts],
        "side": [rng.choice((1, -1)) for _ in ts],
    }, schema=TRADE_SCHEMA_INT_ID)


@dataclass
class Market_:
    venue: Venue
    market: Market
    tick: float
    row: float
    tape: pl.DataFrame


STORES: dict[str, Callable[[], Store]] = {}  # how a test writes more into the store a server reads
MARKETS = [Market_(v, m, tick, row, _tape(v, m, tick, every)) for (v, m, tick, row), every in ((SPOT, 12), (USDM, 15))]


def _day(ts: int) -> int:
    """The UTC day of the last minute closed at ``ts``."""
    return (ts - 1) - (ts - 1) % NS_PER_DAY


async def _fill(store: Store) -> None:
    await store.open()
    for mk in MARKETS:
        def key(table: str, mk: Market_ = mk) -> BatchKey:
            return BatchKey(table, mk.venue, mk.market, "BTCUSDT")

        gaps = [GAP] if mk.market is Market.SPOT else []
        minutes = chain_cvd(build_bars(mk.tape, MIN, grid=Grid(mk.tick, mk.row), revision=1, gaps=gaps, lot=0.001))
        hours = hour_bars(minutes, HOUR, revision=2)
        raw = mk.tape.filter(pl.col("ts_event") >= NOW - 55 * MIN)
        for first in range(0, raw.height, 100):
            await store.write(key(TRADES), encode_batch(raw.slice(first, 100)))
        recent = minutes.filter(pl.col("ts_event") >= NOW - 23 * HOUR)
        for first in range(0, recent.height, 60):
            await store.write(key(BARS_1M), encode_batch(recent.slice(first, 60)))
        for first in range(0, hours.height, 24):
            await store.write(key(BARS_1H), encode_batch(hours.slice(first, 24)))
        if gaps:
            gap = pl.DataFrame([(GAP[0], GAP[1], "btcusdt@aggTrade", "missing_ids", 4, GAP[1])], schema=GAP_SCHEMA,
                               orient="row")
            await store.write(key(GAPS), encode_batch(gap))
            # as the collector stores them: each summarises the day of its last closed minute
            snaps = pl.concat([day_snapshot(minutes.filter((pl.col("ts_event") >= _day(t)) & (pl.col("ts_event") < t)),
                                            mk.tick, t, _day(t)) for t in range(NOW - 9 * MIN, NOW + 1, MIN)])
            await store.write(key(INDICATORS), encode_batch(snaps))
    await store.close()


@pytest.fixture(scope="module", params=["sqlite", "mongodb"])
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``wadm serve`` over a filled store: the embedded one, then MongoDB (the tests' wire server)."""
    data = tmp_path_factory.mktemp("data")
    env = {"WADM_DATA_DIR": str(data), "BINANCE_SYMBOLS": "BTCUSDT", "BINANCE_USDM_SYMBOLS": "BTCUSDT",
           "BYBIT_SYMBOLS": "", "BYBIT_SPOT_SYMBOLS": ""}
    with ExitStack() as stack:
        if request.param != "sqlite":
            server: str = request.getfixturevalue("mongodb_uri")
            env["MONGODB_URI"] = with_database(server, stack.enter_context(scratch_database(server)))
        asyncio.run(_fill(make_store(env.get("MONGODB_URI", ""), data, {})))
        port = free_port()
        proc = stack.enter_context(wadm("serve", env, port))
        api = f"http://127.0.0.1:{port}"
        STORES[api] = lambda: make_store(env.get("MONGODB_URI", ""), data, {})
        yield api
        assert "Traceback" not in proc.output, proc.output


def _get(api: str, path: str, status: int = 200, **params: object) -> Any:
    r = httpx.get(api + path, params=params, timeout=30)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    return r.json()


def _window(start: int, end: int) -> pl.DataFrame:
    return pl.concat([mk.tape.filter((pl.col("ts_event") >= start) & (pl.col("ts_event") <= end))
                      .with_columns(market=pl.lit(str(mk.market))) for mk in MARKETS])


def _expected_profile(start: int, end: int, row: float, **kw: Any) -> Any:
    grid = Grid(0.01, row)
    parts = [rows_from_trades(mk.tape.filter((pl.col("ts_event") >= start) & (pl.col("ts_event") <= end)),
                              Grid(mk.tick, row)) for mk in MARKETS]
    return volume_profile(combine(parts), grid, **kw)


# -- volume profile -------------------------------------------------------------------------------


def test_a_recent_window_is_answered_from_trades_of_every_market(api: str) -> None:
    start, end = NOW - 30 * MIN + 7 * S, NOW - 1
    body = _get(api, "/api/v1/volume-profile/BTCUSDT", start=start // MS, end=end // MS)
    assert body["resolution"] == "trades"
    assert [(s["exchange"], s["market"]) for s in body["sources"]] == [("binance", "spot"), ("binance", "usdm")]
    assert "exchange" not in body, "a combined answer names its sources, not one market"
    assert body["row_size"] == 100.0, "the common row of 20 (spot) and 50 (USD-M)"
    expected = _expected_profile(start, end, 100.0)
    assert (body["poc"], body["vah"], body["val"]) == (expected.poc, expected.vah, expected.val)
    assert body["total_volume"] == expected.total_volume and body["delta"] == expected.delta
    assert "rows" not in body, "rows only when asked"
    assert body["data_complete"] is False
    assert any(g["reason"] == "missing_ids" and g["market"] == "spot" for g in body["gaps"])


def test_the_same_window_from_1m_footprints_gives_the_same_profile(api: str) -> None:
    start, end = NOW - 6 * HOUR, NOW - 1
    for resolution in ("1m", "auto"):
        body = _get(api, "/api/v1/volume-profile/BTCUSDT", start=start // MS, end=end // MS, resolution=resolution,
                    row_size="200", rows="all", value_area="0.8", va_method="one_row", nodes="2")
        assert body["resolution"] == "1m"
        expected = _expected_profile(start, end, 200.0, value_area=0.8, va_method="one_row", nodes=2)
        assert (body["poc"], body["vah"], body["val"]) == (expected.poc, expected.vah, expected.val)
        assert body["hvn"] == list(expected.hvn) and body["lvn"] == list(expected.lvn)
        assert [r["price"] for r in body["rows"]] == expected.rows["price"].to_list()
        assert [r["volume"] for r in body["rows"]] == expected.rows["volume"].to_list()
        assert all(r["delta"] == pytest.approx(r["buy"] - r["sell"]) for r in body["rows"])


def test_a_long_window_is_answered_from_hourly_footprints_with_naked_pocs(api: str) -> None:
    body = _get(api, "/api/v1/volume-profile/BTCUSDT", window="5d", exchange="binance", market="spot", rows="7")
    assert body["resolution"] == "1h" and (body["exchange"], body["market"]) == ("binance", "spot")
    assert len(body["rows"]) == 7 and body["poc"] in [r["price"] for r in body["rows"]]
    assert body["start"] % (3600 * 1000) == 0, "the window starts on the first hourly bar it holds"
    day_start = (NOW - 7 * 24 * HOUR) // NS_PER_DAY * NS_PER_DAY  # every day hourly bars still hold
    sessions = {}
    tape = MARKETS[0].tape
    for day in range(day_start, NOW, NS_PER_DAY):
        part = tape.filter((pl.col("ts_event") >= day) & (pl.col("ts_event") < day + NS_PER_DAY))
        if part.height:
            sessions[day] = volume_profile(rows_from_trades(part, Grid(0.01, 20.0)), Grid(0.01, 20.0))
    naked = []
    for day, profile in sessions.items():
        later = tape.filter(pl.col("ts_event") >= day + NS_PER_DAY)
        touched = later.filter((pl.col("price") >= profile.poc) & (pl.col("price") < profile.poc + 20)).height
        if later.height and not touched:
            naked.append({"session": day // MS, "poc": profile.poc})
    assert body["naked_pocs"] == naked
    assert body["naked_poc_row_size"] == 20.0
    # naked=false: the same profile without them (the cheaper answer the MCP context asks for).
    bare = _get(api, "/api/v1/volume-profile/BTCUSDT", window="5d", exchange="binance", market="spot", rows="7",
                naked="false")
    assert bare["naked_pocs"] == [] and bare["naked_poc_row_size"] is None
    assert {k: v for k, v in bare.items() if not k.startswith("naked") and k != "end"} == {
        k: v for k, v in body.items() if not k.startswith("naked") and k != "end"}


def test_resolution_and_row_size_that_cannot_answer_say_what_can(api: str) -> None:
    err = _get(api, "/api/v1/volume-profile/BTCUSDT", 400, window="3h", resolution="trades")["error"]
    assert err["parameter"] == "resolution" and "RETENTION_RAW_TRADES" in err["message"] and "1m" in err["message"]
    err = _get(api, "/api/v1/volume-profile/BTCUSDT", 400, window="3d", resolution="1m")["error"]
    assert err["parameter"] == "resolution" and "1h" in err["message"]
    err = _get(api, "/api/v1/volume-profile/BTCUSDT", 400, window="6h", row_size="30")["error"]
    assert err["parameter"] == "row_size" and "multiple of 100" in err["message"] and "200" in err["message"]
    err = _get(api, "/api/v1/volume-profile/BTCUSDT", 400, window="20m", row_size="0.05")["error"]
    assert err["parameter"] == "row_size" and "tick 0.1" in err["message"]


@pytest.mark.parametrize(("params", "name"), [
    ({"value_area": "0.3"}, "value_area"), ({"value_area": "nan"}, "value_area"),
    ({"va_method": "greedy"}, "va_method"), ({"nodes": "0"}, "nodes"), ({"rows": "-1"}, "rows"),
    ({"rows": "some"}, "rows"), ({"row_size": "0"}, "row_size"),
    ({"row_size": "1e3"}, "row_size"), ({"resolution": "5m"}, "resolution"), ({"window": "9y"}, "window"),
    ({"exchange": "kraken"}, "exchange"), ({"bogus": "1"}, "bogus"), ({"naked": "no"}, "naked"),
])
def test_bad_profile_parameters_are_400_naming_them(api: str, params: dict[str, str], name: str) -> None:
    err = _get(api, "/api/v1/volume-profile/BTCUSDT", 400, **params)["error"]
    assert err["parameter"] == name and err["code"] == "invalid_parameter"


def test_a_symbol_that_is_not_collected_is_404(api: str) -> None:
    assert _get(api, "/api/v1/volume-profile/DOGEUSDT", 404)["error"]["code"] == "not_found"
    assert _get(api, "/api/v1/order-flow/current/BTCUSDT", 404, exchange="bybit")["error"]["code"] == "not_found"


# -- order flow -----------------------------------------------------------------------------------


def test_current_order_flow_sums_the_minutes_of_every_window(api: str) -> None:
    body = _get(api, "/api/v1/order-flow/current/BTCUSDT", large_notional="100000", limit="5")
    assert body["price"] in (float(MARKETS[0].tape["price"][-1]), float(MARKETS[1].tape["price"][-1]))
    for name, span in (("5m", 5 * MIN), ("1h", HOUR), ("24h", 24 * HOUR)):
        window = body["windows"][name]
        trades = _window(window["start"] * MS, NOW)
        bars = trade_bars(trades.sort("ts_event"), MIN)
        if name != "24h":  # 1m bars are kept 23 h here: the 24h window says where its data ends
            assert window["trades"] == trades.height
            assert window["volume"] == pytest.approx(float(bars["volume"].sum()))
        assert window["delta"] == pytest.approx(window["buy"] - window["sell"])
        assert window["start"] * MS >= body["ts"] * MS - span
    day = body["ts"] * MS - body["ts"] * MS % NS_PER_DAY  # the request's day: the suite may cross midnight
    today = _window(day, NOW)
    signed = today.select((pl.col("qty") * pl.col("side")).sum()).item()
    assert body["cvd"] == pytest.approx(signed), "CVD since 00:00 UTC, both markets"
    large = body["large_trades"]
    assert large and all(t["notional"] >= 100_000 for t in large) and len(large) <= 5
    assert [t["ts"] for t in large] == sorted((t["ts"] for t in large), reverse=True)
    assert body["book"] == [], "serve has no live books"


def test_footprints_merge_minutes_into_the_interval(api: str) -> None:
    # the window ends where the tape does: the suite may reach this test minutes after the tape was made
    body = _get(api, "/api/v1/order-flow/BTCUSDT/footprint", interval="5m", limit="4", exchange="binance",
                market="spot", row_size="40", imbalance_ratio="2.5", stacked="2", end=str(NOW // MS))
    assert body["interval"] == "5m" and body["row_size"] == 40.0 and len(body["bars"]) == 4
    tape = MARKETS[0].tape
    for bar in body["bars"]:
        start = bar["start"] * MS
        trades = tape.filter((pl.col("ts_event") >= start) & (pl.col("ts_event") < start + 5 * MIN))
        assert bar["volume"] == pytest.approx(float(trades["qty"].sum()))
        assert bar["trades"] == trades.height
        assert sum(r["buy"] + r["sell"] for r in bar["rows"]) == pytest.approx(bar["volume"])
        prices = [r["price"] for r in bar["rows"]]
        assert prices == sorted(prices) and all(p % 40 == 0 for p in prices)
        assert bar["delta_min"] <= 0 <= bar["delta_max"]
    assert body["data_complete"] is False or not any(
        b["start"] * MS <= GAP[1] and b["start"] * MS + 5 * MIN > GAP[0] for b in body["bars"])


def test_a_footprint_past_1m_retention_needs_an_hourly_interval(api: str) -> None:
    err = _get(api, "/api/v1/order-flow/BTCUSDT/footprint", 400, window="3d", interval="15m")["error"]
    assert err["parameter"] == "interval" and "1h" in err["message"]
    body = _get(api, "/api/v1/order-flow/BTCUSDT/footprint", window="3d", interval="4h", limit="3")
    assert body["resolution"] == "1h" and len(body["bars"]) == 3
    assert all(b["delta_min"] is None for b in body["bars"]), "combined markets: no delta extremes"


# -- market structure and indicators --------------------------------------------------------------


def test_market_structure_of_a_rising_market(api: str) -> None:
    body = _get(api, "/api/v1/market-structure/BTCUSDT", interval="1h", window="6d", swing="3",
                exchange="binance", market="spot")
    assert body["resolution"] == "1h" and body["swing"] == 3
    labels = [s["label"] for s in body["swings"] if s["label"]]
    assert labels and labels.count("HH") + labels.count("HL") > labels.count("LH") + labels.count("LL")
    assert body["trend"] == "up"
    assert any(e["type"] == "BOS" and e["direction"] == "bullish" for e in body["events"])
    kinds = {k["kind"] for k in body["key_levels"]}
    assert {"poc", "vah", "val"} <= kinds and body["levels"] == "all"
    # levels=swings: the same structure, key levels from the swings alone.
    swings = _get(api, "/api/v1/market-structure/BTCUSDT", interval="1h", window="6d", swing="3",
                  exchange="binance", market="spot", levels="swings")
    assert swings["key_levels"] == [k for k in body["key_levels"] if k["kind"] not in ("poc", "vah", "val")]
    assert (swings["swings"], swings["events"], swings["range"], swings["wyckoff"]) == (
        body["swings"], body["events"], body["range"], body["wyckoff"])
    err = _get(api, "/api/v1/market-structure/BTCUSDT", 400, levels="some")["error"]
    assert err["parameter"] == "levels" and "all, swings" in err["message"]
    for candidate in body["wyckoff"]:
        assert candidate["type"] in ("spring", "upthrust", "selling_climax", "buying_climax")


def test_indicator_history_lists_the_stored_snapshots(api: str) -> None:
    body = _get(api, "/api/v1/indicators/BTCUSDT/history", window="1h", exchange="binance", market="spot",
                limit="4")
    assert body["count"] == 4 and body["truncated"] is True
    ts = [s["ts"] for s in body["snapshots"]]
    assert ts == sorted(ts) and ts[-1] == NOW // MS
    last = body["snapshots"][-1]
    day = _day(NOW)
    today = MARKETS[0].tape.filter((pl.col("ts_event") >= day) & (pl.col("ts_event") < NOW))
    assert last["trades"] == today.height and last["poc"] is not None
    assert last["complete"] is (not (day <= GAP[0] < NOW))
    if not last["complete"]:  # the day's trade gap explains it
        assert body["data_complete"] is False
        assert [(g["start"], g["end"]) for g in body["gaps"]] == [(GAP[0] // MS, GAP[1] // MS)], body["gaps"]


def test_openapi_lists_the_analytics_endpoints_and_their_parameters(api: str) -> None:
    doc = _get(api, "/openapi.json")
    for path, names in (
        ("/api/v1/volume-profile/{symbol}", {"row_size", "value_area", "va_method", "nodes", "rows", "resolution"}),
        ("/api/v1/order-flow/current/{symbol}", {"large_notional"}),
        ("/api/v1/order-flow/{symbol}/footprint", {"interval", "row_size", "imbalance_ratio", "stacked", "limit"}),
        ("/api/v1/market-structure/{symbol}", {"interval", "swing", "limit"}),
        ("/api/v1/indicators/{symbol}/history", {"limit"}),
    ):
        params = {p["name"] for p in doc["paths"][path]["get"]["parameters"]}
        assert names <= params, path


def test_many_shapes_of_current_order_flow_at_once_are_answered_or_refused_with_retry_after(api: str) -> None:
    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=api, timeout=60) as client:
            return await asyncio.gather(*(client.get("/api/v1/order-flow/current/BTCUSDT", params={"limit": n})
                                          for n in range(1, 121)))

    answers = asyncio.run(burst())
    assert {r.status_code for r in answers} <= {200, 429}
    assert all(r.headers.get("retry-after") == "1" for r in answers if r.status_code == 429)
    ok = [(r.json(), int(r.url.params["limit"])) for r in answers if r.status_code == 200]
    assert ok and all(len(body["large_trades"]) <= limit for body, limit in ok)


async def _write(store: Store, key: BatchKey, frame: pl.DataFrame) -> None:
    await store.open()
    try:
        await store.write(key, encode_batch(frame))
    finally:
        await store.close()


def test_current_order_flow_of_wadm_serve_includes_the_open_minute_from_the_store(api: str) -> None:
    """Last in the module: it stores trades after the tape's end. Without collectors (``wadm serve``),
    the open minute is what the store holds (another process collects)."""
    now = time.time_ns()
    if now % MIN > 50 * S:  # not across a minute boundary
        time.sleep((MIN - now % MIN) / S + 0.2)
        now = time.time_ns()
    minute = now - now % MIN
    ts = [max(minute, now - S) + k * MS for k in range(5)]
    frame = pl.DataFrame({"ts_event": ts, "ts_recv": ts, "id": range(10**9, 10**9 + 5),
                          "price": [61_234.5, 61_234.6, 61_234.4, 61_234.5, 61_234.7], "qty": [0.5] * 5,
                          "side": [1, 1, -1, 1, 1]}, schema=TRADE_SCHEMA_INT_ID)
    asyncio.run(_write(STORES[api](), BatchKey(TRADES, Venue.BINANCE, Market.SPOT, "BTCUSDT"), frame))
    body = _get(api, "/api/v1/order-flow/current/BTCUSDT", exchange="binance", market="spot")
    bar = body["bar"]
    assert bar["start"] == minute // MS and bar["trades"] == 5, bar
    assert (bar["open"], bar["high"], bar["low"], bar["close"]) == (61_234.5, 61_234.7, 61_234.4, 61_234.7)
    assert bar["volume"] == pytest.approx(2.5) and bar["delta"] == pytest.approx(1.5)
    assert body["price"] == 61_234.7 and body["windows"]["5m"]["trades"] >= 5
