"""End to end on all four markets at once, with the deployment's default symbols, through faults.

``wadm run`` (a real process, default settings apart from the endpoint URLs) collects trades,
books and klines from an emulator running in a thread of this test process, so the test can
read the emulator's truth: every trade it generated, its true books and its bars. Faults are
injected throughout: sequence gaps, a crossed update, a Bybit ``u=1`` restart, failing, slow and
stale snapshots, 429s, a silence across a minute boundary, dropped connections, a
``serverShutdown`` and a silent stream. After each recovery the served books must equal the
true books; at the end every trade the venue allows to backfill is stored exactly once, every
trade missing is inside a recorded gap, and the closed klines match the emulator's bars.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import httpx
import polars as pl
import pytest

from tests.conftest import free_port
from tests.mongo import with_database
from tests.procs import Proc, stored_trade_ids, stored_trades, wadm, wait_for
from wadm.analytics.bars import footprints, trade_bars
from wadm.analytics.grid import Grid
from wadm.analytics.profile import combine, rows_from_trades, volume_profile
from wadm.api.resources.orderflow import MAX_LARGE
from wadm.emulator import Emulator, SyntheticSpec, wall_clock_ms
from wadm.emulator.bybit import trade_id_text

pytestmark = pytest.mark.e2e

T = TypeVar("T")
SERIES = [  # the deployment spec's default symbols
    ("binance", "spot", "BTCUSDT"), ("binance", "spot", "ETHUSDT"), ("binance", "spot", "XRPUSDT"),
    ("binance", "usdm", "BTCUSDT"),
    ("bybit", "linear", "BTCUSDT"), ("bybit", "linear", "ETHUSDT"), ("bybit", "linear", "SOLUSDT"),
    ("bybit", "spot", "BTCUSDT"),
]
MS = 1_000_000
MIN_NS = 60_000 * MS
LEAD = 40_000  # the emulator's clock starts this many ms before a minute boundary
STALE_AFTER = 4


class ThreadedEmulator:
    """An :class:`Emulator` on its own event loop in a thread; ``call`` runs code on that loop."""

    def __init__(self, specs: list[SyntheticSpec], clock: Callable[[], int]) -> None:
        self.loop = asyncio.new_event_loop()
        self.ready: Future[Emulator] = Future()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, args=(specs, clock), daemon=True)
        self._thread.start()
        self.emu = self.ready.result(timeout=30)
        self.http = self.emu.http_url

    def _run(self, specs: list[SyntheticSpec], clock: Callable[[], int]) -> None:
        async def main() -> None:
            self._stop = asyncio.Event()
            async with Emulator(synthetic=specs, seed=11, clock=clock) as emu:
                self.ready.set_result(emu)
                await self._stop.wait()

        self.loop.run_until_complete(main())
        self.loop.close()

    def call(self, fn: Callable[[], T]) -> T:
        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout=30)

    def control(self, action: str, **params: Any) -> dict[str, Any]:
        r = httpx.get(f"{self.http}/control/{action}", params=params, timeout=10)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    def close(self) -> None:
        assert self._stop is not None
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)


class Setup:
    def __init__(self, emu: ThreadedEmulator, app: Proc, api: str) -> None:
        self.emu, self.app, self.api = emu, app, api

    def get(self, path: str, **params: Any) -> httpx.Response:
        return httpx.get(self.api + path, params=params, timeout=10)

    def healthy(self) -> bool:
        return self.get("/health").status_code == 200

    def wait_healthy(self, what: str) -> None:
        wait_for(self.healthy, 60, what, self.app, interval=0.25)

    def streams(self, channel: str | None = None) -> dict[tuple[str, str, str], dict[str, Any]]:
        """Health's streams (of one channel), by (exchange, market, symbol) or by stream name for all."""
        rows = self.get("/health").json()["streams"]
        return {(x["exchange"], x["market"], x["symbol"] if channel else x["stream"]): x for x in rows
                if channel is None or x["channel"] == channel}

    def connections(self) -> dict[str, dict[str, Any]]:
        return {x["name"]: x for x in self.get("/health").json()["connections"]}

    def wait_every_connection(self, field: str, before: dict[str, dict[str, Any]], what: str,
                              only: Callable[[str], bool] = lambda name: True) -> None:
        """Wait until ``field`` grew on every connection (of those ``only`` accepts, by name)."""
        def grew() -> bool:
            now = self.connections()
            return all(now[name][field] > old[field] for name, old in before.items() if only(name))

        wait_for(grew, 60, what, self.app, interval=0.25)


def _env_for(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    if request.param == "sqlite":
        return {}
    server: str = request.getfixturevalue("mongodb_uri")
    return {"MONGODB_URI": with_database(server, request.getfixturevalue("mongodb_database"))}


def _env(emu: ThreadedEmulator, data: Path) -> dict[str, str]:
    base = emu.http
    ws = base.replace("http://", "ws://")
    return {
        # Symbols are the defaults: nothing set.
        "WADM_BINANCE_SPOT_WS_URL": f"{ws}/binance/spot",
        "WADM_BINANCE_USDM_WS_URL": f"{ws}/binance/usdm",
        "WADM_BYBIT_WS_URL": f"{ws}/bybit",
        "WADM_BINANCE_SPOT_REST_URL": f"{base}/binance/spot",
        "WADM_BINANCE_USDM_REST_URL": f"{base}/binance/usdm",
        "WADM_BYBIT_REST_URL": f"{base}/bybit",
        "COLLECTORS_START_DELAY": "0",
        "WADM_STALE_AFTER": str(STALE_AFTER),
        "WADM_RECONNECT_MIN_DELAY": "0.05",
        "WADM_RECONNECT_MAX_DELAY": "0.5",
        "WADM_FLUSH_INTERVAL": "0.2",
        "WADM_BACKFILL_DEADLINE": "20",
        "WADM_DATA_DIR": str(data),
    }


@pytest.fixture(params=["sqlite", "mongodb"])
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Setup]:
    """The emulator and ``wadm run`` storing into the embedded store, then into MongoDB."""
    env = _env_for(request, tmp_path)
    now = wall_clock_ms()
    # The emulator's next minute boundary is LEAD ms away. Its clock runs behind ours (a venue
    # clock ahead of ours would put trades in our future, outside "the last hour").
    offset = ((60_000 - LEAD) - now % 60_000) % 60_000 - 60_000
    specs = [SyntheticSpec(market=m, symbol=s, rate=20, venue=v, book=True) for v, m, s in SERIES]
    emu = ThreadedEmulator(specs, lambda: wall_clock_ms() + offset)
    try:
        port = free_port()
        with wadm("run", _env(emu, tmp_path) | env, port) as app:
            s = Setup(emu, app, f"http://127.0.0.1:{port}")
            s.wait_healthy("all 24 streams to go live")
            yield s
            assert app.popen.poll() is None, "wadm exited on its own:\n" + app.output
    finally:
        emu.close()


def _params(venue: str, market: str) -> dict[str, str]:
    return {"exchange": venue, "market": market}


def _differ(s: Setup) -> list[str]:
    """The series whose served book differs from the emulator's true book right now."""
    wrong = []
    for venue, market, symbol in SERIES:
        ours = s.get(f"/api/v1/orderbook/{symbol}", depth=50, **_params(venue, market)).json()
        true = s.emu.control("book", venue=venue, market=market, symbol=symbol, depth=50)
        bids = [[float(p), float(q)] for p, q in true["bids"]]
        asks = [[float(p), float(q)] for p, q in true["asks"]]
        if ours["state"] != "live" or ours["bids"] != bids or ours["asks"] != asks:
            wrong.append(f"{venue}/{market}/{symbol}: {ours['state']} ours {ours['update_id']}")
    return wrong


def _books_match(s: Setup) -> list[str]:
    """Compare every served book with the emulator's true book while the market is paused.

    In-flight updates land within moments; a book still resyncing needs the market to move (a
    Binance book asks for its snapshot on its next diff), so the caller resumes and asks again.
    """
    s.emu.control("pause")
    try:
        deadline = time.monotonic() + 3.0
        while (wrong := _differ(s)) and time.monotonic() < deadline:
            continue
        return wrong
    finally:
        s.emu.control("resume")


def _check_books(s: Setup, after: str) -> None:
    wrong: list[str] = []

    def exact() -> bool:
        wrong[:] = _books_match(s)
        return not wrong

    wait_for(exact, 20, f"every served book to equal the true book after {after} ({wrong})", s.app, interval=0.5)


def _stored_trades(s: Setup, venue: str, market: str, symbol: str) -> list[Any]:
    return stored_trade_ids(s.api, symbol, **_params(venue, market))


def _gaps(s: Setup, venue: str, market: str, symbol: str, channel: str) -> list[dict[str, Any]]:
    body = s.get("/api/v1/gaps", symbol=symbol, window="1h", channel=channel, **_params(venue, market)).json()
    gaps: list[dict[str, Any]] = body["gaps"]
    return gaps


def _emulator_klines(s: Setup, venue: str, market: str, symbol: str, first: int, last: int) -> list[list[float]]:
    if venue == "binance":
        path = "/binance/spot/api/v3/klines" if market == "spot" else "/binance/usdm/fapi/v1/klines"
        rows = httpx.get(s.emu.http + path, params={"symbol": symbol, "interval": "1m", "startTime": first,
                                                     "endTime": last}, timeout=10).json()
        return [[float(x) for x in r[:6]] for r in rows]
    rows = httpx.get(s.emu.http + "/bybit/v5/market/kline", params={
        "category": market, "symbol": symbol, "interval": "1", "start": first, "end": last}, timeout=10).json()
    return sorted([float(x) for x in r[:6]] for r in rows["result"]["list"])


def test_four_markets_stay_exact_through_faults(setup: Setup) -> None:
    s = setup
    c = s.emu.control
    _check_books(s, "start")

    # Book faults, one market each, while everything else keeps flowing.
    assert c("gap", count=3, venue="binance", market="spot", symbol="BTCUSDT")["affected"] == 1
    assert c("crossed", venue="binance", market="usdm", symbol="BTCUSDT")["affected"] == 1
    assert c("gap", count=2, venue="bybit", market="linear", symbol="ETHUSDT")["affected"] == 1
    assert c("restart_book", venue="bybit", market="linear", symbol="SOLUSDT")["affected"] == 1
    c("fail_snapshots", count=2, market="spot", symbol="ETHUSDT")
    assert c("gap", count=1, venue="binance", market="spot", symbol="ETHUSDT")["affected"] == 1
    c("stale_snapshots", updates=20, count=1, market="spot", symbol="XRPUSDT")
    assert c("gap", count=1, venue="binance", market="spot", symbol="XRPUSDT")["affected"] == 1
    faulted = [("binance", "spot", "BTCUSDT"), ("binance", "usdm", "BTCUSDT"), ("bybit", "linear", "ETHUSDT"),
               ("binance", "spot", "ETHUSDT"), ("binance", "spot", "XRPUSDT")]
    wait_for(lambda: all(s.streams("book")[k]["resyncs"] >= 1 for k in faulted), 20, "each fault to break its book",
             s.app, interval=0.25)
    _check_books(s, "gaps, a crossed update, a u=1 restart, failing and stale snapshots")

    # A slow snapshot: the broken book is reported as resyncing, never served as live.
    c("slow_snapshots", seconds=3, count=1, market="usdm")
    resyncs = s.streams("book")[("binance", "usdm", "BTCUSDT")]["resyncs"]
    assert c("gap", count=1, venue="binance", market="usdm", symbol="BTCUSDT")["affected"] == 1
    wait_for(lambda: s.streams("book")[("binance", "usdm", "BTCUSDT")]["resyncs"] > resyncs, 10,
             "the gap to break the USD-M book", s.app, interval=0.05)
    book = s.get("/api/v1/orderbook/BTCUSDT", **_params("binance", "usdm")).json()
    assert book["state"] == "resyncing" and book["bids"] == [] and book["mid"] is None, book
    health = s.get("/health")
    assert health.status_code == 503
    states = {(x["exchange"], x["market"], x["stream"]): x["state"] for x in health.json()["streams"]}
    assert states[("binance", "usdm", "btcusdt@depth@100ms")] == "resyncing"
    # 429 with Retry-After on the next snapshots of spot.
    c("rest_status", status=429, count=2, retry_after=1, market="spot")
    assert c("gap", count=1, venue="binance", market="spot", symbol="BTCUSDT")["affected"] == 1
    s.wait_healthy("the books to resync after a slow snapshot and 429s")
    _check_books(s, "a slow snapshot and 429s")

    # Silence everything across a minute boundary: trades, diffs and the closing klines are lost.
    # It outlasts STALE_AFTER, so the watchdog replaces the connections: on Bybit, whose trade
    # ids cannot reveal a loss, the disconnect window is what tells us trades may be missing.
    boundary_in = (60_000 - s.emu.call(s.emu.emu.clock) % 60_000) / 1000
    if boundary_in < 3:  # the faults above took long (a loaded machine): use the next boundary
        boundary_in += 60
    time.sleep(boundary_in - 1.0)  # NOTE: deliberate timing: the silence must span a minute boundary
    before = s.connections()
    assert c("silence", seconds=STALE_AFTER + 3)["affected"] == 12  # the watchdog acts within a tick of it
    # Kline streams may be silent for 90 s (a quiet symbol pushes once a minute): theirs stay.
    s.wait_every_connection("stale_reconnects", before, "the watchdog to replace every silent connection",
                            only=lambda name: "/klines/" not in name)
    s.wait_healthy("the streams to recover from the silence")
    _check_books(s, "a silence across a minute boundary")

    # Connections cut, a serverShutdown, one silent stream.
    before = s.connections()
    assert c("drop")["affected"] == 12
    s.wait_every_connection("reconnects", before, "every dropped connection to be replaced")
    wait_for(lambda: len(c("stats")["connections"]) == 12, 30, "every new connection to reach the emulator", s.app)
    before = s.connections()
    assert c("shutdown", grace=1, venue="binance")["affected"] >= 1
    assert c("silence_stream", seconds=STALE_AFTER + 3, stream="publicTrade.BTCUSDT", market="spot",
             venue="bybit")["affected"] == 1
    s.wait_every_connection("rotations", before, "every Binance connection to rotate",
                            only=lambda name: name.startswith("binance/"))
    s.wait_every_connection("stale_reconnects", before, "the silent stream's connection to be replaced",
                            only=lambda name: name.startswith("bybit/spot/trades/"))
    s.wait_healthy("the streams to recover from drops, a shutdown and a silent stream")
    _check_books(s, "drops, a serverShutdown and a silent stream")

    # Let the next minute close normally too, then freeze the market and compare everything.
    boundary = s.emu.call(s.emu.emu.clock) // 60_000 * 60_000 + 60_000
    wait_for(lambda: all((x["last_closed"] or 0) >= boundary - 60_000 for x in s.streams("klines").values()), 90,
             "the next minute to close on every kline stream", s.app, interval=0.5)
    c("pause")

    body = s.get("/health").json()
    assert body["status"] == "ok", body
    book_streams = {(x["exchange"], x["market"], x["symbol"]): x for x in body["streams"] if x["channel"] == "book"}
    for key, resyncs in ((("binance", "spot", "BTCUSDT"), 2), (("binance", "usdm", "BTCUSDT"), 2),
                         (("bybit", "linear", "ETHUSDT"), 1)):
        assert book_streams[key]["resyncs"] >= resyncs, book_streams[key]
        assert book_streams[key]["gaps"] >= 1, book_streams[key]  # each resync window was recorded
    metrics = s.get("/metrics").text
    for line in ('wadm_book_live{channel="book",market="usdm",symbol="BTCUSDT",venue="binance"} 1.0',
                 'wadm_book_resyncs_total{channel="book",market="linear",reason="gap",symbol="ETHUSDT",venue="bybit"}',
                 "wadm_collector_backfilled_trades_total{", "wadm_collector_backfilled_klines_total{",
                 "wadm_gaps_recorded_total{", 'wadm_rest_throttled_total{host="'):
        assert line in metrics, line

    def delivered_ids(venue: str, market: str, symbol: str) -> list[Any]:
        ids: list[Any] = c("delivered", stream=f"{symbol.lower()}@aggTrade" if venue == "binance"
                           else f"publicTrade.{symbol}", market=market, venue=venue)["ids"]
        return ids

    def settled() -> bool:
        """Every delivered trade stored, and nothing still backfilling or waiting for the store."""
        for venue, market, symbol in SERIES:
            stored, delivered = _stored_trades(s, venue, market, symbol), delivered_ids(venue, market, symbol)
            if venue == "binance" and stored[-1:] != delivered[-1:]:
                return False
            if venue == "bybit" and not set(stored) >= {str(i) for i in delivered}:
                return False
            page = s.get(f"/api/v1/trades/{symbol}", window="1h", limit=1, **_params(venue, market)).json()
            if any(g["reason"] in ("backfilling", "not_yet_written") for g in page["gaps"]):
                return False
        return True

    wait_for(settled, 60, "every delivered trade to be stored and every backfill to end", s.app, interval=0.5)
    for venue, market, symbol in SERIES:
        where = f"{venue}/{market}/{symbol}"
        stored = _stored_trades(s, venue, market, symbol)
        assert len(stored) == len(set(stored)), f"{where}: a trade was stored twice"
        delivered = delivered_ids(venue, market, symbol)
        trade_gaps = _gaps(s, venue, market, symbol, "trades")
        if venue == "binance":
            # aggTrade ids are contiguous and REST aggTrades backfills them exactly.
            assert stored == list(range(delivered[0], delivered[-1] + 1)), where
            assert trade_gaps == [], where
        else:
            assert set(stored) >= {str(i) for i in delivered}, where
            feed = s.emu.emu.feeds[("bybit", market, symbol)]
            generated = s.emu.call(lambda f=feed: f.history.recent_trades(1_000_000))  # type: ignore[misc]
            first_ts = min(r.ts_ms for r in generated if trade_id_text(market, r.trade_id) == str(delivered[0]))
            have = set(stored)
            missing = [r for r in generated if r.ts_ms >= first_ts and trade_id_text(market, r.trade_id) not in have]
            uncovered = [r for r in missing
                         if not any(g["start"] <= r.ts_ms <= g["end"] for g in trade_gaps)]
            assert uncovered == [], f"{where}: {len(uncovered)} missing trades outside any recorded gap"

        # Closed klines: every minute from the first closed bar we stored to the last, equal to
        # the emulator's bars (the one closed during the silence came from REST).
        bars = s.get(f"/api/v1/klines/{symbol}", interval="1m", window="1h", **_params(venue, market)).json()
        closed = [b for b in bars["klines"] if b["closed"]]
        assert len(closed) >= 2, f"{where}: {bars}"
        assert [b["ts"] for b in closed] == list(range(closed[0]["ts"], closed[-1]["ts"] + 1, 60_000)), where
        truth = _emulator_klines(s, venue, market, symbol, closed[0]["ts"], closed[-1]["ts"])
        ours = [[float(b["ts"]), b["open"], b["high"], b["low"], b["close"], b["volume"]] for b in closed]
        assert ours == truth, where
        assert bars["data_complete"] is True, f"{where}: {bars['gaps']}"
        klines_streams = {x["symbol"]: x for x in body["streams"]
                          if x["channel"] == "klines" and x["exchange"] == venue and x["market"] == market}
        assert klines_streams[symbol]["backfilled_klines"] >= 1, f"{where}: the bar closed in the silence"

    # Book snapshots were stored every second, and the resync windows are recorded as gaps.
    hist = s.get("/api/v1/orderbook/BTCUSDT/history", window="1m", limit=100, depth=5,
                 **_params("binance", "spot")).json()
    assert hist["count"] >= 30 and len(hist["snapshots"][0]["bids"]) == 5
    assert any(g["reason"] == "book_gap" for g in _gaps(s, "binance", "spot", "BTCUSDT", "book"))
    symbols = s.get("/api/v1/symbols").json()["symbols"]
    assert {(x["exchange"], x["market"], x["symbol"]) for x in symbols} == set(SERIES)
    assert all(sorted(x["channels"]) == ["book", "klines", "trades"] and x["collecting"] for x in symbols)
    # The venue's listing gave every series its price tick and quantity lot (the emulator's grids).
    for x in symbols:
        grid = s.emu.emu.feeds[(x["exchange"], x["market"], x["symbol"])].instrument
        assert (x["tick_size"], x["lot_size"]) == (10.0 ** -grid.tick_decimals, 10.0 ** -grid.lot_decimals), x
    # Bars and footprints closed from the live tape, closed again for the trades backfilled after
    # the silence, equal the stored trades minute by minute on every market.
    ticks = _ticks(s)
    for venue, market, symbol in SERIES:
        deadline = time.monotonic() + 30
        while (wrong := _bar_mismatches(s, venue, market, symbol, ticks[(venue, market, symbol)])) \
                and time.monotonic() < deadline:
            time.sleep(1.0)
        assert not wrong, f"{venue}/{market}/{symbol}: 1m bars differ from the stored trades: {wrong[:5]}"
    _check_analytics(s, ticks)
    now = s.get("/api/v1/order-flow/current/BTCUSDT").json()
    assert {(x["exchange"], x["market"]) for x in now["sources"]} == {(v, m) for v, m, y in SERIES if y == "BTCUSDT"}
    assert now["bar"]["start"] == now["ts"] // 60_000 * 60_000
    history = s.get("/api/v1/indicators/ETHUSDT/history", window="1h", **_params("bybit", "linear")).json()
    assert history["count"] >= 1 and history["snapshots"][-1]["volume"] > 0, history
    c("resume")
    _check_books(s, "the end of the test")
    # Paused longer than STALE_AFTER, the connections were replaced: live again, current order
    # flow shows every market's book.
    s.wait_healthy("the streams to recover from the pause")
    now = s.get("/api/v1/order-flow/current/BTCUSDT").json()
    assert {b["exchange"] for b in now["book"]} == {"binance", "bybit"} and all(b["mid"] for b in now["book"]), now


def _tape(s: Setup, venue: str, market: str, symbol: str, **window: Any) -> pl.DataFrame:
    """The stored trades the API serves (over the last hour unless ``window`` says), as analytics take them."""
    rows = stored_trades(s.api, symbol, **_params(venue, market), **window)
    return pl.DataFrame({
        "ts_event": [t["ts"] * MS for t in rows], "price": [t["price"] for t in rows],
        "qty": [t["qty"] for t in rows], "side": [1 if t["side"] == "buy" else -1 for t in rows],
    }, schema={"ts_event": pl.Int64(), "price": pl.Float64(), "qty": pl.Float64(), "side": pl.Int8()})


def _ticks(s: Setup) -> dict[tuple[str, str, str], float]:
    symbols = s.get("/api/v1/symbols").json()["symbols"]
    return {(x["exchange"], x["market"], x["symbol"]): x["tick_size"] for x in symbols}


def _near(a: float | None, b: float | None) -> bool:
    return a == b or (a is not None and b is not None and abs(a - b) <= 1e-6 * max(1.0, abs(b)))


def _cells(rows: Any) -> dict[float, tuple[float, float]]:
    """Footprint or profile rows with volume, by price, rounded past float noise."""
    return {r["price"]: (round(r["buy"], 8), round(r["sell"], 8)) for r in rows if r["buy"] or r["sell"]}


def _bar_mismatches(s: Setup, venue: str, market: str, symbol: str, tick: float) -> list[str]:
    """Minutes whose served 1m bar or footprint differs from the same computed from the stored trades."""
    tape = _tape(s, venue, market, symbol)
    body = s.get(f"/api/v1/order-flow/{symbol}/footprint", interval="1m", window="1h", limit=500,
                 **_params(venue, market)).json()
    served = {b["start"]: b for b in body["bars"]}
    bars = trade_bars(tape, MIN_NS)
    grid = Grid(tick, body["row_size"])
    cells = footprints(tape, grid, MIN_NS).with_columns(price=grid.price(pl.col("index")))
    first = bars["start"].min() // MS + 60_000 if bars.height else 0  # the first stored minute may be cut
    wrong = []
    for bar in bars.iter_rows(named=True):
        minute = bar["start"] // MS
        got = served.get(minute)
        if minute < first:
            continue
        if got is None:
            wrong.append(f"{minute}: no bar served for {bar['trades']} trades")
            continue
        differ = [k for k in ("open", "high", "low", "close", "volume", "buy", "sell", "delta", "delta_min",
                              "delta_max", "cvd", "trades") if not _near(got[k], bar[k])]
        if differ:
            wrong.append(f"{minute}: {', '.join(f'{k} {got[k]} != {bar[k]}' for k in differ)}")
        elif _cells(got["rows"]) != _cells(cells.filter(pl.col("start") == bar["start"]).to_dicts()):
            wrong.append(f"{minute}: footprint rows differ from the trades'")
    return wrong


def _check_analytics(s: Setup, ticks: dict[tuple[str, str, str], float]) -> None:
    """With the market paused, the served BTCUSDT volume profile and current order flow equal the
    analytics functions applied to the trades read back from ``/api/v1/trades``."""
    sources = [(v, m) for v, m, y in SERIES if y == "BTCUSDT"]
    end = int(time.time() * 1000)
    start = end - 50 * 60_000
    tapes = {(v, m): _tape(s, v, m, "BTCUSDT") for v, m in sources}
    window = {k: t.filter(pl.col("ts_event").is_between(start * MS, end * MS)) for k, t in tapes.items()}

    vp = s.get("/api/v1/volume-profile/BTCUSDT", start=start, end=end, rows="all").json()
    assert vp["resolution"] == "trades" and {(x["exchange"], x["market"]) for x in vp["sources"]} == set(sources)
    row = vp["row_size"]
    parts = [rows_from_trades(t, Grid(ticks[(v, m, "BTCUSDT")], row)) for (v, m), t in window.items()]
    profile = volume_profile(combine(parts), Grid(min(ticks[(v, m, "BTCUSDT")] for v, m in sources), row))
    assert (vp["poc"], vp["val"], vp["vah"]) == (profile.poc, profile.val, profile.vah), vp
    for name, value in (("total_volume", profile.total_volume), ("buy_volume", profile.buy_volume),
                        ("sell_volume", profile.sell_volume)):
        assert _near(vp[name], value), (name, vp[name], value)
    assert _cells(vp["rows"]) == _cells(profile.rows.to_dicts())
    assert (vp["hvn"], vp["lvn"]) == (list(profile.hvn), list(profile.lvn))

    now = s.get("/api/v1/order-flow/current/BTCUSDT", limit=MAX_LARGE).json()
    tape = pl.concat(tapes.values())
    for name, w in now["windows"].items():
        part = tape.filter(pl.col("ts_event") >= w["start"] * MS)
        buy = float(part.filter(pl.col("side") > 0)["qty"].sum())
        sell = float(part.filter(pl.col("side") < 0)["qty"].sum())
        assert (w["trades"], _near(w["buy"], buy), _near(w["sell"], sell)) == (part.height, True, True), (name, w)
    day = now["ts"] // 86_400_000 * 86_400_000
    today = tape.filter(pl.col("ts_event") >= day * MS)
    assert _near(now["cvd"], float((today["qty"] * today["side"]).sum())), now["cvd"]
    last = tape.filter(pl.col("ts_event") == tape["ts_event"].max())
    assert now["price"] in last["price"].to_list()
    opened = tape.filter(pl.col("ts_event") >= now["bar"]["start"] * MS)
    assert now["bar"]["trades"] == opened.height and _near(now["bar"]["volume"], float(opened["qty"].sum()))
    # Large trades: the newest of those at or above the threshold in the lookback (whole minutes).
    lookback, threshold = now["lookback_start"], now["large_notional"]
    recent = tape.filter(pl.col("ts_event") >= lookback * MS).with_columns(notional=pl.col("price") * pl.col("qty"))
    want = recent.filter(pl.col("notional") >= threshold)
    assert threshold > 0 and len(now["large_trades"]) == min(MAX_LARGE, want.height), (now["large_trades"], want)
    assert [x["ts"] for x in now["large_trades"]] == sorted((x["ts"] for x in now["large_trades"]), reverse=True)
    # With a threshold that about 50 trades reach, exactly those.
    bar = sorted(recent["notional"].to_list(), reverse=True)[49]
    few = s.get("/api/v1/order-flow/current/BTCUSDT", limit=MAX_LARGE, large_notional=bar).json()
    large = recent.filter(pl.col("notional") >= bar)
    assert sorted((x["ts"], x["price"], x["qty"]) for x in few["large_trades"]) == sorted(
        (t // MS, p, q) for t, p, q in large.select("ts_event", "price", "qty").iter_rows())
    # And the orders: prints of one venue, millisecond and side taken together.
    merged = pl.concat([t.filter(pl.col("ts_event") >= lookback * MS).group_by("ts_event", "side").agg(
        qty=pl.col("qty").sum(), notional=(pl.col("price") * pl.col("qty")).sum()) for t in tapes.values()])
    orders = merged.filter(pl.col("notional") >= bar)
    assert orders.height < MAX_LARGE
    assert sorted((x["ts"], round(x["qty"], 6)) for x in few["large_orders"]) == sorted(
        (t // MS, round(q, 6)) for t, q in orders.select("ts_event", "qty").iter_rows())
