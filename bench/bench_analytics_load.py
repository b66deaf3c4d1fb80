"""Analytics under load: 7-day answers beside the collectors, and ``order-flow/current`` at 200 requests/s.

A plain script (it runs real processes for a few minutes): ``uv run python bench/bench_analytics_load.py``.

1. Starts the exchange emulator (``wadm emulate``) with the deployment's default symbols on all
   four markets (8 series, books on) at ``RATE`` trades/s per series: 250 by default, about
   **2,000 trades/s in total**.
2. Fills the store (the data dir's ``wadm.db``) with what a service running for a week would
   hold for BTCUSDT on Binance spot and USD-M, built the way
   ``tests/integration/test_analytics_api.py::_fill`` builds it (``build_bars`` -> ``chain_cvd``
   -> ``hour_bars``, ``encode_batch``, ``SqliteStore.write``) from a BTC-like random walk
   (``bench_analytics.tape``) that ends at the current minute at 60,000 (the emulator's start
   price): **1h bars for 7 days, 1m bars for the last 23 hours**, and the raw trades of the last
   ``RAW_S`` seconds at ``RATE`` trades/s (15 minutes by default: the lookback that
   ``order-flow/current`` reads trades for, so it works on a steady-state amount of data, not on
   the few minutes a fresh process holds). Ticks, lots and the footprint row (20) are the ones the
   service itself uses for BTC at 60,000, so stored and live bars combine. The week's tape is
   sparser (``TRADES_7D`` trades per market) than the last minutes': hourly footprints only need
   a realistic price path. BTCUSDT is also collected on Bybit (linear and spot): those series are
   not filled, so analytics answers combine 4 sources and say ``not_collected`` for Bybit's week,
   and the stored raw trades of a restart window are recorded as a ``restart`` gap.
3. Starts ``wadm run`` with default settings against the emulator (trades, books, klines; the
   embedded store; API gate 2 running + 32 waiting), waits until every stream is live, and checks
   one answer of each analytics request (200, ``resolution`` ``1h``, real content); these first
   answers also warm the bar cache.
4. Measures four windows of ``WINDOW_S`` seconds. In every one ``/health`` is polled every 100 ms
   on a new connection (as bench_api.py does), and worker RSS and ``/metrics`` are sampled each second.

   * **A baseline**: no other client.
   * **A load**: ``CLIENTS`` concurrent clients, each on its own kept-alive ``httpx`` connection,
     request in a closed loop, alternately ``volume-profile/BTCUSDT?window=7d`` and
     ``order-flow/BTCUSDT/footprint?interval=1h&window=7d&limit=500`` (the largest footprint the
     API allows: ``limit`` is at most 500 bars, a window before 1-minute retention needs 1h or 4h
     bars, and 1h gives the most bars: 169, about 4,000 footprint rows). Every 200 is parsed and
     checked (``resolution`` ``1h``, a POC, 168+ bars).
   * **B baseline**: ``GET /health`` at ``RPS`` requests/s, paced open-loop (request *i* is sent at
     ``t0 + i / RPS`` whatever the earlier ones do) from one ``httpx.AsyncClient`` with a pool of
     up to 100 kept-alive connections (what an MCP server would hold).
   * **B load**: ``GET /api/v1/order-flow/current/BTCUSDT`` the same way.

   Latency of a paced request is from its send to the end of its body (a wait for a free pool
   connection included); the generator's lateness (send time minus due time), the requests in
   flight and the answers that came after the window are reported beside it. Before each B
   window, one client requests the same path back to back for 10 s: the answer time without
   queueing.
5. Stops ``wadm run`` (SIGTERM: it writes everything buffered) and reads every stored trade back:
   venue-to-receive latency ``ts_recv - ts_event`` per trade (both this machine's wall clock; the
   trade time has millisecond resolution), grouped by the window its ``ts_recv`` falls in, as
   bench_api.py does. Binance trade ids are contiguous (one fill per aggregate trade), so holes in
   the stored ids of the live trades of the 4 Binance series count trades lost end to end.

Goals: (A) with 20 clients asking for 7-day analytics, the collectors' p99 venue-to-receive
latency stays under 250 ms, nothing is dropped (``/health``: store rows dropped, stream drops and
missing trades 0; no hole in Binance ids) and trades are stored at the baseline's rate; (B)
``order-flow/current`` at 200 requests/s answers with p99 <= 10 ms, no trade is dropped and
``/health`` answers 200 throughout. Each figure is reported for its baseline and its load window
(same run, STYLE.md convention 14) with the ratio load/baseline. Nothing here asserts on time. The
load generator (httpx, JSON parsing) runs on the same cores; its CPU share is reported.

Knobs (environment): ``WADM_BENCH_ALOAD_RATE`` (trades/s per series, default 250: 8 series, 2,000/s),
``WADM_BENCH_ALOAD_WINDOW_S`` (each of the 4 windows, default 30), ``WADM_BENCH_ALOAD_CLIENTS``
(default 20), ``WADM_BENCH_ALOAD_RPS`` (default 200), ``WADM_BENCH_ALOAD_RAW_S`` (seconds of raw
trades stored before the start, default 900), ``WADM_BENCH_ALOAD_TRADES_7D`` (trades per market
over the week before that, default 600,000).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

import httpx
import orjson
import polars as pl

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_analytics import tape
from bench.bench_api import Sampler, Window, _cpu_s, _env, _pq, _q, stored_latencies
from bench.conftest import machine
from tests.conftest import free_port
from tests.helpers import Answer, poll
from tests.procs import Proc, emulator, granian_worker, raise_fd_limit, stop, wadm, wait_for
from wadm.analytics.aggregates import build_bars, chain_cvd, hour_bars
from wadm.analytics.grid import Grid, default_row
from wadm.config import DEFAULT_SYMBOLS
from wadm.records import BARS_1H, BARS_1M, TRADE_SCHEMA_INT_ID, TRADES, BatchKey, Market, Venue
from wadm.store import SqliteStore, encode_batch

RATE = float(os.environ.get("WADM_BENCH_ALOAD_RATE", "250"))
WINDOW_S = float(os.environ.get("WADM_BENCH_ALOAD_WINDOW_S", "30"))
CLIENTS = int(os.environ.get("WADM_BENCH_ALOAD_CLIENTS", "20"))
RPS = float(os.environ.get("WADM_BENCH_ALOAD_RPS", "200"))
RAW_S = int(os.environ.get("WADM_BENCH_ALOAD_RAW_S", "900"))
TRADES_7D = int(os.environ.get("WADM_BENCH_ALOAD_TRADES_7D", "600000"))
COLLECTOR_P99_GOAL_S = 0.250
CURRENT_P99_GOAL_S = 0.010
START_PRICE = 60_000.0  # the emulator's BTCUSDT start price: the stored tape ends there
HEAVY = ("/api/v1/volume-profile/BTCUSDT?window=7d",
         "/api/v1/order-flow/BTCUSDT/footprint?interval=1h&window=7d&limit=500")
CURRENT = "/api/v1/order-flow/current/BTCUSDT"
POOL = 100  # connections of the paced client
PROBE_S = 10.0  # one client back to back, before each B window
_NS = 1_000_000_000
MIN = 60 * _NS
HOUR = 60 * MIN
DAY = 24 * HOUR
# (market, tick, lot) of the emulator's BTCUSDT, as the service reads them from its listing.
BTC_MARKETS = ((Market.SPOT, 0.01, 0.00001), (Market.USDM, 0.1, 0.001))


# -- the store a week-old service would hold ---------------------------------------------------------


def _decimals(step: float) -> int:
    """Decimals of a tick or lot (0.01 -> 2, 1e-05 -> 5)."""
    exponent = Decimal(repr(step)).as_tuple().exponent
    assert isinstance(exponent, int)
    return max(0, -exponent)


def _week_tape(now: int, tick: float, lot: float, seed: int) -> pl.DataFrame:
    """7 days of trades ending before ``now``: sparse, then ``RATE``/s for the last ``RAW_S`` s, ending at 60,000."""
    dense_n = int(RATE * RAW_S)
    sparse = tape(TRADES_7D, 7 * DAY - RAW_S * _NS, start=now - 7 * DAY, seed=seed)
    walk = sparse
    if dense_n:
        dense = tape(dense_n, RAW_S * _NS, start=now - RAW_S * _NS, seed=seed + 100)
        # One continuous walk: the dense part starts where the sparse one ends.
        walk = pl.concat([sparse, dense.with_columns(pl.col("price") + (sparse["price"][-1] - dense["price"][0]))])
    shift = START_PRICE - float(walk["price"][-1])  # all of it ends at the emulator's start price
    return walk.with_columns(
        ts_recv=pl.col("ts_event") + 3_000_000,
        id=pl.int_range(1, walk.height + 1, dtype=pl.Int64),
        price=(((pl.col("price") + shift) / tick).round(0) * tick).round(_decimals(tick)),
        qty=((pl.col("qty") / lot).round(0).clip(lower_bound=1) * lot).round(_decimals(lot)),
    ).cast(TRADE_SCHEMA_INT_ID)  # type: ignore[arg-type]


async def prefill(db: Path, now: int) -> dict[str, int]:
    """Write raw trades, 1m bars and 1h bars of BTCUSDT spot and USD-M, as ``_fill`` does; counts per table."""
    store = SqliteStore(db)
    await store.open()
    counts = {"trades": 0, "bars_1m": 0, "bars_1h": 0, "tape": 0}
    try:
        for i, (market, tick, lot) in enumerate(BTC_MARKETS):
            def key(table: str, market: Market = market) -> BatchKey:
                return BatchKey(table, Venue.BINANCE, market, "BTCUSDT")

            trades = _week_tape(now, tick, lot, seed=11 + i)
            grid = Grid(tick, float(default_row(tick, START_PRICE)))
            minutes = chain_cvd(build_bars(trades, MIN, grid=grid, revision=1, lot=lot))
            hours = hour_bars(minutes, HOUR, revision=2)
            raw = trades.filter(pl.col("ts_event") >= now - RAW_S * _NS) if RAW_S else trades.clear()
            for first in range(0, raw.height, 1000):
                await store.write(key(TRADES), encode_batch(raw.slice(first, 1000)))
            recent = minutes.filter(pl.col("ts_event") >= now - 23 * HOUR)
            for first in range(0, recent.height, 60):
                await store.write(key(BARS_1M), encode_batch(recent.slice(first, 60)))
            for first in range(0, hours.height, 24):
                await store.write(key(BARS_1H), encode_batch(hours.slice(first, 24)))
            counts["tape"] += trades.height
            counts["trades"] += raw.height
            counts["bars_1m"] += recent.height
            counts["bars_1h"] += hours.height
    finally:
        await store.close()
    return counts


# -- load ---------------------------------------------------------------------------------------------


class Load(Protocol):
    def start(self) -> None: ...

    def finish(self) -> None: ...


@dataclass
class Heavy:
    """One heavy answer: its path, status, seconds, body size and whether its content checked out."""

    path: str
    status: int
    seconds: float
    size: int
    valid: bool
    note: str = ""


def check_heavy(path: str, body: bytes) -> tuple[bool, str]:
    """A 7-day answer has ``resolution`` 1h and real content (a POC / 168+ bars with footprint rows)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return False, f"not JSON: {exc}"
    if doc.get("resolution") != "1h":
        return False, f"resolution {doc.get('resolution')}"
    gaps = ", ".join(sorted({f"{g['market']} {g['reason']}" for g in doc.get("gaps", [])})) or "none"
    if "volume-profile" in path:
        ok = doc.get("poc") is not None and doc.get("total_volume", 0) > 0 and doc.get("row_count", 0) > 10
        return ok, (f"poc {doc.get('poc')}, {doc.get('row_count')} rows, data_complete {doc.get('data_complete')} "
                    f"(gaps: {gaps})")
    bars = doc.get("bars") or []
    cells = sum(len(b["rows"]) for b in bars)
    return len(bars) >= 168 and cells > 168, (f"{len(bars)} bars, {cells} rows, data_complete "
                                              f"{doc.get('data_complete')} (gaps: {gaps})")


class HeavyClients:
    """``count`` clients in a closed loop, each on its own kept-alive connection, in a thread."""

    def __init__(self, api: str, count: int) -> None:
        self.api = api
        self.count = count
        self.answers: list[Heavy] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _client(self, k: int) -> None:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(base_url=self.api, timeout=120, limits=limits) as client:
            n = k
            while not self.stopping.is_set():
                path = HEAVY[n % len(HEAVY)]
                n += 1
                t0 = time.perf_counter()
                try:
                    r = await client.get(path)
                except httpx.HTTPError as exc:
                    self.answers.append(Heavy(path, 0, time.perf_counter() - t0, 0, False, repr(exc)))
                    continue
                seconds = time.perf_counter() - t0
                valid, note = check_heavy(path, r.content) if r.status_code == 200 else (False, r.text[:200])
                self.answers.append(Heavy(path, r.status_code, seconds, len(r.content), valid, note))
                if r.status_code == 429:
                    await asyncio.sleep(float(r.headers.get("retry-after", "1")))

    async def _main(self) -> None:
        await asyncio.gather(*(self._client(k) for k in range(self.count)))

    def start(self) -> None:
        self.thread.start()

    def finish(self) -> None:
        self.stopping.set()
        self.thread.join(180)


@dataclass
class Shot:
    """One paced request: when it was due and sent (perf_counter s), how long it took, its status."""

    due: float
    sent: float
    seconds: float
    status: int
    size: int
    in_flight: int  # requests in flight when this one was sent, itself included


class Paced:
    """``GET path`` at ``rps`` requests/s, open loop, from one client with kept-alive connections, in a thread.

    The client holds at most ``POOL`` connections: a request sent while ``POOL`` are busy waits for
    one (in the client), and that wait is part of its latency, as it would be for a real client.
    """

    def __init__(self, api: str, path: str, rps: float) -> None:
        self.api = api
        self.path = path
        self.rps = rps
        self.shots: list[Shot] = []
        self.errors: list[str] = []
        self.in_flight = 0
        self.stopped_at = 0.0  # perf_counter when the window ended (answers may come later)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _one(self, client: httpx.AsyncClient, due: float) -> None:
        self.in_flight += 1
        in_flight = self.in_flight
        sent = time.perf_counter()
        try:
            r = await client.get(self.path)
        except httpx.HTTPError as exc:
            self.shots.append(Shot(due, sent, time.perf_counter() - sent, 0, 0, in_flight))
            self.errors.append(repr(exc))
            return
        finally:
            self.in_flight -= 1
        self.shots.append(Shot(due, sent, time.perf_counter() - sent, r.status_code, len(r.content), in_flight))

    async def _main(self) -> None:
        limits = httpx.Limits(max_connections=POOL, max_keepalive_connections=POOL)
        async with httpx.AsyncClient(base_url=self.api, timeout=30, limits=limits) as client:
            await client.get("/health")  # open the first connection before the clock starts
            tasks: set[asyncio.Task[None]] = set()
            t0 = time.perf_counter()
            i = 0
            while not self.stopping.is_set():
                due = t0 + i / self.rps
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.create_task(self._one(client, due))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                i += 1
            await asyncio.gather(*tasks)

    def start(self) -> None:
        self.thread.start()

    def finish(self) -> None:
        self.stopped_at = time.perf_counter()
        self.stopping.set()
        self.thread.join(180)


def probe(api: str, path: str, seconds: float) -> list[float]:
    """Seconds of each 200 answer to ``GET path`` requested back to back by one kept-alive client."""
    out: list[float] = []
    with httpx.Client(base_url=api, timeout=60) as client:
        client.get("/health")
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            r = client.get(path)
            if r.status_code == 200:
                out.append(time.perf_counter() - t0)
    return out


# -- windows ------------------------------------------------------------------------------------------


@dataclass
class LoadWindow(Window):
    """A window of bench_api.py with this file's loads."""

    heavy_answers: list[Heavy] = field(default_factory=list)
    shots: list[Shot] = field(default_factory=list)
    paced_path: str = ""
    paced_end: float = 0.0
    probe: list[float] = field(default_factory=list)  # one client back to back before the window


def measure(name: str, seconds: float, app: Proc, worker: int, emu: Proc, api: str, load: Load | None
            ) -> LoadWindow:
    """Poll /health every 100 ms for ``seconds`` with ``load`` running (if any); sample RSS and /metrics."""
    w = LoadWindow(name)
    pids = {"wadm worker": worker, "emulator": emu.popen.pid}
    cpu0 = {k: _cpu_s(p) for k, p in pids.items()}
    me0, t0 = time.process_time(), time.monotonic()
    stop_health = threading.Event()
    health: list[Answer] = []
    poller = threading.Thread(target=lambda: health.extend(poll(api + "/health", stop_health)), daemon=True)
    with Sampler(api, worker) as sampler:
        w.start_ns = time.time_ns()
        poller.start()
        if load is not None:
            load.start()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and app.popen.poll() is None:
            time.sleep(0.2)
        w.end_ns = time.time_ns()
        stop_health.set()
        if load is not None:
            load.finish()
        poller.join(30)
    elapsed = time.monotonic() - t0
    w.cpu = {k: (_cpu_s(p) - cpu0[k]) / elapsed for k, p in pids.items()}
    w.cpu["load generator (this process)"] = (time.process_time() - me0) / elapsed
    w.health, w.rss, w.metric_p99 = health, sampler.rss, sampler.metric_p99
    if isinstance(load, HeavyClients):
        w.heavy_answers = load.answers
    if isinstance(load, Paced):
        w.shots, w.paced_path, w.paced_end = load.shots, load.path, load.stopped_at
    return w


# -- reading the store back -----------------------------------------------------------------------------


async def binance_id_holes(db: Path, since_ns: int) -> dict[str, tuple[int, int]]:
    """Per Binance series: (stored live trades, ids missing between the first and last) since ``since_ns``."""
    store = SqliteStore(db)
    await store.open()
    out = {}
    try:
        for (venue, market), symbols in DEFAULT_SYMBOLS.items():
            if venue is not Venue.BINANCE:
                continue
            for symbol in symbols:
                frame = await store.read(BatchKey(TRADES, venue, market, symbol), since_ns, time.time_ns())
                ids = frame.filter(pl.col("ts_recv") >= since_ns)["id"].unique()
                if ids.len():
                    span = int(ids.max()) - int(ids.min()) + 1  # type: ignore[arg-type]
                    out[f"{venue}/{market}/{symbol}"] = (ids.len(), span - ids.len())
    finally:
        await store.close()
    return out


# -- report ---------------------------------------------------------------------------------------------


def _codes(statuses: list[int]) -> dict[int, int]:
    codes: dict[int, int] = {}
    for s in statuses:
        codes[s] = codes.get(s, 0) + 1
    return dict(sorted(codes.items()))


def _ms(x: float) -> str:
    return "n/a" if x != x else f"{x * 1e3:.1f} ms"


def _ratio(b: float, u: float) -> str:
    return f"x{u / b:.1f}" if b and b == b and u == u else "n/a"


def _collector(w: Window, q: float) -> float:
    lat = w.latency_ms
    return _pq(lat["latency_ms"], q) / 1e3 if lat is not None and lat.height else float("nan")


def _trades_per_s(w: Window) -> float:
    lat = w.latency_ms
    return (lat.height if lat is not None else 0) / ((w.end_ns - w.start_ns) / _NS)


def describe_window(w: LoadWindow) -> None:
    print(f"\n{w.name}: {(w.end_ns - w.start_ns) / _NS:.0f} s; /health polls {_codes([a.status for a in w.health])} "
          f"(p99 {_ms(_q([a.seconds for a in w.health], 0.99))}); CPU (share of one core) "
          + ", ".join(f"{k} {v:.0%}" for k, v in w.cpu.items()))
    if w.rss:
        print(f"  worker RSS median {statistics.median(w.rss):.0f} MB, max {max(w.rss):.0f} MB")
    if w.heavy_answers:
        print(f"  heavy requests: {len(w.heavy_answers)} answered {_codes([a.status for a in w.heavy_answers])}; "
              f"{sum(a.valid for a in w.heavy_answers)} checked valid")
        for path in HEAVY:
            mine = [a for a in w.heavy_answers if a.path == path]
            ok = [a.seconds for a in mine if a.status == 200]
            sizes = [a.size for a in mine if a.status == 200]
            notes = sorted({a.note for a in mine if a.status == 200})
            bad = sorted({a.note for a in mine if not a.valid})[:3]
            print(f"    {path}: {len(mine)} ({len(ok)} x 200), 200 answered p50 {_ms(_q(ok, 0.5))}, p99 "
                  f"{_ms(_q(ok, 0.99))}, max {_ms(max(ok, default=float('nan')))}; body median "
                  f"{statistics.median(sizes) / 1e3 if sizes else 0:.0f} kB; e.g. {notes[:1]}"
                  + (f"; NOT valid e.g. {bad}" if bad else ""))
    if w.probe:
        print(f"  before the window, one client back to back: {len(w.probe)} answers 200, p50 {_ms(_q(w.probe, 0.5))}, "
              f"p99 {_ms(_q(w.probe, 0.99))}, max {_ms(max(w.probe))}")
    if w.shots:
        span = max(s.sent for s in w.shots) - min(s.sent for s in w.shots)
        lag = [s.sent - s.due for s in w.shots]
        print(f"  paced {w.paced_path}: {len(w.shots)} sent ({len(w.shots) / span:.0f}/s) "
              f"{_codes([s.status for s in w.shots])}; generator lateness p99 {_ms(_q(lag, 0.99))}, max "
              f"{_ms(max(lag))}; in flight at most {max(s.in_flight for s in w.shots)} (pool {POOL}); "
              f"{sum(s.in_flight > POOL for s in w.shots)} sent while the pool was full; "
              f"{sum(s.sent + s.seconds > w.paced_end for s in w.shots)} answered after the window ended "
              f"(the last {max(s.sent + s.seconds for s in w.shots) - w.paced_end:.1f} s after)")
        for status in sorted({s.status for s in w.shots}):
            lat = [s.seconds for s in w.shots if s.status == status]
            print(f"    {status}: {len(lat)}, p50 {_ms(_q(lat, 0.5))}, p90 {_ms(_q(lat, 0.9))}, "
                  f"p99 {_ms(_q(lat, 0.99))}, p99.9 {_ms(_q(lat, 0.999))}, max {_ms(max(lat))}; body median "
                  f"{statistics.median([s.size for s in w.shots if s.status == status]) / 1e3:.1f} kB")
    lat_df = w.latency_ms
    if lat_df is not None and lat_df.height:
        per = lat_df.group_by("series").agg(p99=pl.col("latency_ms").quantile(0.99, interpolation="higher"),
                                            n=pl.len())
        worst = per.sort("p99", descending=True).row(0, named=True)
        col = lat_df["latency_ms"]
        print(f"  stored trades received in the window: {lat_df.height:,} ({_trades_per_s(w):.0f}/s); latency p50 "
              f"{_pq(col, 0.5):.1f} ms, p99 {_pq(col, 0.99):.1f} ms, max {_pq(col, 1.0):.1f} ms; worst series "
              f"{worst['series']} p99 {worst['p99']:.1f} ms ({worst['n']:,} trades)")
    if w.metric_p99:
        print(f"  /metrics last-batch p99 (max over series), sampled each second: median "
              f"{statistics.median(w.metric_p99) * 1e3:.1f} ms, max {max(w.metric_p99) * 1e3:.1f} ms")


Row = tuple[str, Callable[[LoadWindow], float], float | None, Callable[[float], str]]


def table(title: str, base: LoadWindow, load: LoadWindow, rows: list[Row]) -> None:
    print(f"\n{title}\n\n| figure | {base.name} | {load.name} | load / baseline | goal | met under load |")
    print("|---|---|---|---|---|---|")
    for name, fn, goal, fmt in rows:
        b, u = fn(base), fn(load)
        verdict = ("MET" if u <= goal else "NOT MET") if goal is not None else ""
        goal_text = f"<= {fmt(goal)}" if goal is not None else ""
        print(f"| {name} | {fmt(b)} | {fmt(u)} | {_ratio(b, u)} | {goal_text} | {verdict} |")


def report(windows: list[LoadWindow], notes: list[str]) -> None:
    a_base, a_load, b_base, b_load = windows
    print()
    print(machine())
    for note in notes:
        print(note)
    for w in windows:
        describe_window(w)

    def paced_q(q: float) -> Callable[[LoadWindow], float]:
        return lambda w: _q([s.seconds for s in w.shots if s.status == 200], q)

    collector: list[Row] = [
        ("collector latency p50 (stored trades)", lambda w: _collector(w, 0.5), None, _ms),
        ("collector latency p99 (stored trades)", lambda w: _collector(w, 0.99), COLLECTOR_P99_GOAL_S, _ms),
        ("collector latency max (stored trades)", lambda w: _collector(w, 1.0), None, _ms),
        ("collector p99 from /metrics (max sample)", lambda w: max(w.metric_p99, default=float("nan")), None, _ms),
        ("trades stored per second", _trades_per_s, None, lambda x: f"{x:,.0f}"),
        ("/health poll p99 (new connection)", lambda w: _q([a.seconds for a in w.health], 0.99), None, _ms),
    ]
    table(f"A. {CLIENTS} clients asking for 7-day analytics vs the collectors", a_base, a_load, collector)
    def ok_per_s(w: LoadWindow) -> float:
        return sum(s.status == 200 and s.sent + s.seconds <= w.paced_end for s in w.shots) / (
            (w.end_ns - w.start_ns) / _NS)

    table(f"B. {CURRENT} at {RPS:g} requests/s (paced open loop, kept-alive connections; baseline: /health)",
          b_base, b_load, [
              ("share of requests answered 200", lambda w: sum(s.status == 200 for s in w.shots) / len(w.shots),
               None, lambda x: f"{x:.1%}"),
              ("200 answers per second (within the window)", ok_per_s, None, lambda x: f"{x:,.1f}"),
              ("answer latency p50 (200 answers)", paced_q(0.5), None, _ms),
              ("answer latency p99 (200 answers)", paced_q(0.99), CURRENT_P99_GOAL_S, _ms),
              ("answer latency max (200 answers)", paced_q(1.0), None, _ms),
              ("one client back to back: p50", lambda w: _q(w.probe, 0.5), None, _ms),
              ("one client back to back: p99", lambda w: _q(w.probe, 0.99), None, _ms),
              *collector,
          ])


# -- main ----------------------------------------------------------------------------------------------


def main() -> int:
    nofile = raise_fd_limit()
    load_start = os.getloadavg()
    print(f"{machine()}; load average at start {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="wadm-bench-aload-") as tmp:
        data = Path(tmp)
        emu_args = ("--symbols", "BTCUSDT,ETHUSDT,XRPUSDT", "--markets", "spot,usdm", "--bybit-markets", "spot,linear",
                    "--bybit-symbols", "BTCUSDT,ETHUSDT,SOLUSDT", "--rate", f"{RATE:g}", "--book", "on", "--seed", "1")
        with emulator(*emu_args) as (emu, emu_port):
            t = time.perf_counter()
            now = time.time_ns() // MIN * MIN
            counts = asyncio.run(prefill(data / "wadm.db", now))
            print(f"store filled in {time.perf_counter() - t:.0f} s: {counts}", flush=True)
            port = free_port()
            api = f"http://127.0.0.1:{port}"
            with wadm("run", _env(emu_port, data), port, cwd=data) as app:
                wait_for(lambda: httpx.get(api + "/health", timeout=10).status_code == 200, 120,
                         "every stream to go live", app, interval=0.5)
                live_since = time.time_ns()
                worker = granian_worker(app)
                checks = []
                for path in (*HEAVY, CURRENT):
                    t = time.perf_counter()
                    r = httpx.get(api + path, timeout=120)
                    took = time.perf_counter() - t
                    valid, note = check_heavy(path, r.content) if path in HEAVY and r.status_code == 200 else (
                        r.status_code == 200, f"{len(r.content)} bytes")
                    checks.append(f"  {path}: {r.status_code} in {took * 1e3:.0f} ms, {len(r.content) / 1e3:.0f} kB, "
                                  f"valid {valid}: {note}")
                    if r.status_code != 200 or not valid:
                        print(f"first answer not as expected: {path} {r.status_code} {r.text[:500]}", flush=True)
                doc: dict[str, Any] = httpx.get(api + CURRENT, timeout=30).json()
                checks.append(f"  current: resolution {doc.get('resolution')}, price {doc.get('price')}, 15m window "
                              f"{doc['windows']['15m']['trades']} trades, {len(doc.get('large_trades', []))} large "
                              f"trades, book {[b.get('mid') for b in doc.get('book', [])]}")
                print("first answers (bar cache warmed):\n" + "\n".join(checks), flush=True)
                time.sleep(5)
                print(f"measuring 4 windows of {WINDOW_S:g} s", flush=True)
                a_base = measure("A baseline: no analytics clients", WINDOW_S, app, worker, emu, api, None)
                a_load = measure(f"A load: {CLIENTS} clients, 7-day VP + footprint", WINDOW_S, app, worker, emu, api,
                                 HeavyClients(api, CLIENTS))
                health_probe = probe(api, "/health", PROBE_S)
                b_base = measure(f"B baseline: /health at {RPS:g}/s", WINDOW_S, app, worker, emu, api,
                                 Paced(api, "/health", RPS))
                current_probe = probe(api, CURRENT, PROBE_S)
                b_load = measure(f"B load: order-flow/current at {RPS:g}/s", WINDOW_S, app, worker, emu, api,
                                 Paced(api, CURRENT, RPS))
                b_base.probe, b_load.probe = health_probe, current_probe
                time.sleep(3)  # the last batches reach the store
                health = httpx.get(api + "/health", timeout=30).json()
                gaps = httpx.get(api + "/api/v1/gaps", timeout=30).json().get("gaps", [])
                code = stop(app)
                tracebacks = app.output.count("Traceback")
            windows = [a_base, a_load, b_base, b_load]
            for w in windows:
                w.latency_ms = asyncio.run(stored_latencies(data / "wadm.db", w.start_ns, w.end_ns))
            holes = asyncio.run(binance_id_holes(data / "wadm.db", live_since))
    streams = health["streams"]
    load_end = os.getloadavg()
    notes = [
        f"load average at start {load_start[0]:.2f}, at the end {load_end[0]:.2f}",
        f"emulator: default symbols on 4 markets at {RATE:g} trades/s each ({8 * RATE:,.0f}/s), books on; wadm run "
        f"with default settings (embedded store); RLIMIT_NOFILE {nofile}; store prefilled: {counts}",
        f"wadm exit code {code}, tracebacks in its output {tracebacks}; /health at the end: status {health['status']}, "
        f"store dropped rows {health['store']['dropped_rows']}, stream drops {sum(s['dropped'] for s in streams)}, "
        f"missing trades {sum(s.get('missing_trades', 0) for s in streams)}, gaps "
        f"{sum(s.get('gaps', 0) or 0 for s in streams)}, backfilled trades "
        f"{sum(s.get('backfilled_trades', 0) for s in streams)}, reconnects "
        f"{sum(c['reconnects'] for c in health['connections'])}",
        "recorded gaps (/api/v1/gaps): " + ("; ".join(
            f"{g['exchange']}/{g['market']}/{g['symbol']} {g['stream']} {g['reason']} "
            f"{((g['end'] or 0) - (g['start'] or 0)) / 1e3:.1f} s, missing {g['missing']}" for g in gaps) or "none"),
        "Binance live trades stored (count, ids missing): "
        + ", ".join(f"{k} {n:,}/{m}" for k, (n, m) in holes.items()),
    ]
    report(windows, notes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
