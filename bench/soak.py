"""Soak: a time-compressed day of the default symbols with faults on a schedule (not in CI).

``uv run python bench/soak.py`` (``WADM_SOAK_MINUTES``, default 30; ``WADM_SOAK_SPEED``, default 20;
``WADM_SOAK_SCHEDULE=outage`` for one 10-minute store outage instead of the day's faults).

1. Starts the exchange emulator with the default symbols on all four markets (books on), each
   feed at ``SPEED`` times a typical real rate of that market; an nx-27017 MongoDB wire server;
   a webhook receiver; and ``wadm run`` on MongoDB with alerts on.
2. Runs the schedule over the soak (times scale with its length): connection drops every few
   minutes, ``serverShutdown``, two store outages (10 minutes, then 1; the spool takes over), a
   venue answering 429 and then 418 with the connections dropped (backfill through the ban), and
   a SIGTERM restart.
3. Samples every 10 s: RSS and CPU of WADM's worker, ``/health`` (status, spool bytes), alerts.
4. Pauses the market, waits for WADM to settle, and reconciles every trade series: Binance ids
   are contiguous, so the trades the market made from the first stored one on must be exactly the
   stored ones plus the ``missing`` counts of the recorded gaps; Bybit's are not, so the trades
   delivered to WADM must all be stored (once) or lie in a recorded gap.
5. Prints the report for bench/README.md: RSS over time and its slope after warm-up, CPU share,
   the reconciliation, spool peak, alerts, disk bytes per stored trade (the batches' BSON size in
   MongoDB, the file size in SQLite for the same trades).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import polars as pl
from pymongo import MongoClient

from bench.conftest import machine
from tests.conftest import free_port
from tests.e2e.test_spool import Mongo
from tests.integration.test_alerts import receiver
from tests.procs import Proc, children, emulator, rss_mb, spawn, stop, wait_for
from wadm.config import DEFAULT_SYMBOLS
from wadm.records import GAPS, TRADES, BatchKey, Market, Venue
from wadm.store import SqliteStore
from wadm.store.mongo import MongoStore

MINUTES = float(os.environ.get("WADM_SOAK_MINUTES", "30"))
SPEED = float(os.environ.get("WADM_SOAK_SPEED", "20"))
SAMPLE_S = 10.0
# Left out of the RSS slope after each start: the bar scheduler fills its 16 minutes of trades.
WARM_UP_S = 17 * 60
# Typical trades per second (aggTrades on Binance) of each default series on an ordinary day.
REAL_RATES = {
    ("binance", "spot", "BTCUSDT"): 15.0, ("binance", "spot", "ETHUSDT"): 10.0, ("binance", "spot", "XRPUSDT"): 5.0,
    ("binance", "usdm", "BTCUSDT"): 25.0, ("bybit", "linear", "BTCUSDT"): 15.0, ("bybit", "linear", "ETHUSDT"): 10.0,
    ("bybit", "linear", "SOLUSDT"): 6.0, ("bybit", "spot", "BTCUSDT"): 5.0,
}
# (share of the soak, action, seconds it lasts)
SCHEDULES = {
    "day": [(k / 10, "drop", 0.0) for k in range(1, 10)] + [
        (0.15, "shutdown", 0.0), (0.20, "store_outage", 600.0), (0.55, "venue_ban", 0.0), (0.60, "shutdown", 0.0),
        (0.70, "restart", 20.0), (0.80, "store_outage", 60.0)],
    # WADM_SOAK_SCHEDULE=outage (with WADM_SOAK_MINUTES=32): one store outage of 10 minutes (the
    # spool's target), at 20x, once memory has warmed up (the bar scheduler keeps 16 minutes of trades).
    "outage": [(0.55, "store_outage", 600.0)],
    "none": [],  # no faults: disk use at a given speed
}
SCHEDULE = SCHEDULES[os.environ.get("WADM_SOAK_SCHEDULE", "day")]


@dataclass
class Sample:
    t: float
    rss_mb: float
    cpu_s: float
    status: str
    spool_bytes: int
    alerts: int


@dataclass
class Run:
    emu_port: int
    mongo: Mongo
    env: dict[str, str]
    port: int
    app: Proc | None = None
    samples: list[Sample] = field(default_factory=list)
    events: list[tuple[float, str]] = field(default_factory=list)
    cpu_before: float = 0.0  # CPU seconds of workers that exited (restarts)
    outages: list[tuple[float, float]] = field(default_factory=list)  # store outages, seconds from the start
    started: float = field(default_factory=time.monotonic)

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def control(self, action: str, **params: Any) -> Any:
        return httpx.get(f"http://127.0.0.1:{self.emu_port}/control/{action}", params=params, timeout=30).json()

    def start(self) -> None:
        self.app = spawn([sys.executable, "-m", "wadm", "run"], {**os.environ, **self.env})
        wait_for(lambda: httpx.get(self.api + "/health", timeout=5).status_code in (200, 503), 120, "WADM", self.app)

    def worker(self) -> int | None:
        assert self.app is not None
        found = children(self.app.popen.pid)
        return found[0] if len(found) == 1 else None

    def note(self, what: str) -> None:
        self.events.append((time.monotonic() - self.started, what))
        print(f"[{(time.monotonic() - self.started) / 60:5.1f} min] {what}", flush=True)


def _cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def _sampler(run: Run, alerts: list[dict[str, Any]], done: threading.Event) -> None:
    last_cpu = 0.0
    while not done.wait(SAMPLE_S):
        pid = run.worker() if run.app is not None and run.app.popen.poll() is None else None
        try:
            body = httpx.get(run.api + "/health", timeout=5).json()
            status, spool = body["status"], int((body["store"].get("spool") or {}).get("bytes", 0))
        except (httpx.HTTPError, ValueError, KeyError):
            status, spool = "down", 0
        cpu = _cpu_s(pid) if pid else 0.0
        if pid:
            last_cpu = cpu
        run.samples.append(Sample(time.monotonic() - run.started, (rss_mb(pid) or 0.0) if pid else 0.0,
                                  run.cpu_before + (cpu if pid else last_cpu), status, spool, len(alerts)))


def _act(run: Run, action: str, lasts: float) -> None:
    if action == "drop":
        run.note(f"drop every connection: {run.control('drop')['affected']} dropped")
    elif action == "shutdown":
        run.note(f"serverShutdown to every connection: {run.control('shutdown', grace=2)['affected']}")
    elif action == "store_outage":
        run.note(f"store killed for {lasts:.0f} s")
        began = time.monotonic() - run.started
        run.mongo.kill()
        time.sleep(lasts)
        run.mongo.start()
        run.outages.append((began, time.monotonic() - run.started))
        run.note("store back")
    elif action == "venue_ban":
        run.control("rest_status", status=429, count=30, retry_after=2, venue="binance")
        run.control("rest_status", status=418, count=3, retry_after=20, venue="binance")
        run.note(f"Binance REST: 30 x 429 then 3 x 418, and the connections dropped "
                 f"({run.control('drop')['affected']})")
    elif action == "restart":
        assert run.app is not None
        pid = run.worker()
        run.cpu_before += _cpu_s(pid) if pid else 0.0
        code = stop(run.app, timeout=90)
        run.note(f"SIGTERM: exit {code}; down for {lasts:.0f} s")
        time.sleep(lasts)
        run.start()
        run.note("restarted")


def _trade_stream(venue: str, symbol: str) -> str:
    return f"{symbol.lower()}@aggTrade" if venue == "binance" else f"publicTrade.{symbol}"


async def _read(uri: str, key: BatchKey) -> pl.DataFrame:
    store = MongoStore(uri)
    await store.open()
    try:
        return await store.read(key, 0, 2**62)
    finally:
        await store.close()


def _reconcile(run: Run) -> tuple[list[dict[str, Any]], pl.DataFrame]:
    feeds = {(f["venue"], f["market"], f["symbol"]): f for f in run.control("stats")["feeds"]}
    rows, everything = [], []
    for (venue, market), symbols in DEFAULT_SYMBOLS.items():
        for symbol in symbols:
            key = BatchKey(TRADES, Venue(venue), Market(market), symbol)
            trades = asyncio.run(_read(run.mongo.uri, key))
            everything.append(trades.select("ts_event"))
            gaps = asyncio.run(_read(run.mongo.uri, BatchKey(GAPS, Venue(venue), Market(market), symbol)))
            stream = _trade_stream(str(venue), symbol)
            mine = gaps.filter(pl.col("stream") == stream) if gaps.height else gaps
            ids = trades["id"].to_list()
            row: dict[str, Any] = {"series": f"{venue} {market} {symbol}", "stored": len(ids),
                                   "duplicates": len(ids) - len(set(ids)), "gaps": mine.height,
                                   "gap_missing": int(mine["missing"].fill_null(0).sum()) if mine.height else 0}
            if venue == "binance":
                made = int(feeds[(str(venue), str(market), symbol)]["next_agg_id"]) - 1
                first = min(ids)
                row["made"] = made - first + 1
                row["not_stored"] = len(set(range(first, made + 1)) - set(ids))
                row["exact"] = row["duplicates"] == 0 and row["made"] == row["stored"] + row["gap_missing"]
            else:
                delivered = set(run.control("delivered", stream=stream, market=str(market), venue="bybit")["ids"])
                row["made"] = len(delivered)
                lost = delivered - set(ids)
                row["not_stored"] = len(lost)
                row["exact"] = row["duplicates"] == 0 and (not lost or mine.height > 0)
            rows.append(row)
    return rows, pl.concat(everything)


def _disk(run: Run, tmp: Path) -> dict[str, float]:
    """Bytes per stored trade: MongoDB batch documents (BSON), and SQLite's file for the same batches."""
    client: MongoClient[dict[str, Any]] = MongoClient(run.mongo.uri, serverSelectionTimeoutMS=10_000)
    from bson import encode

    total_bson, trades = 0, 0
    db = client.get_default_database()
    tables: dict[str, float] = {}
    for name in db.list_collection_names():
        size = 0
        for doc in db[name].find():
            size += len(encode(doc))
            if name == TRADES:
                trades += int(doc.get("count", 0))
        tables[name] = size
    total_bson = int(tables.get(TRADES, 0))
    client.close()

    async def copy() -> tuple[int, int]:
        src = MongoStore(run.mongo.uri)
        dst = SqliteStore(tmp / "copy.db")
        await src.open()
        await dst.open()
        n = 0
        try:
            from wadm.store.codec import encode_batch

            for (venue, market), symbols in DEFAULT_SYMBOLS.items():
                for symbol in symbols:
                    key = BatchKey(TRADES, Venue(venue), Market(market), symbol)
                    frame = await src.read(key, 0, 2**62)
                    # Batches as the writer cuts them: one per second of trades.
                    for _, part in frame.group_by(pl.col("ts_recv") // 1_000_000_000, maintain_order=True):
                        await dst.write(key, encode_batch(part))
                    n += frame.height
        finally:
            await src.close()
            await dst.close()
        return n, (tmp / "copy.db").stat().st_size

    copied, size = asyncio.run(copy())
    return {"mongodb_bson_per_trade": total_bson / max(trades, 1), "sqlite_file_per_trade": size / max(copied, 1),
            "trades": float(trades), **{f"bytes:{name}": float(b) for name, b in tables.items()}}


def _slope_mb_per_hour(samples: list[Sample], events: list[tuple[float, str]]) -> tuple[float, float]:
    """RSS slope (MB/hour) from ``WARM_UP_S`` after the last start to the end, and how long that is (s)."""
    starts = [0.0] + [t for t, what in events if what == "restarted"]
    cut = starts[-1] + WARM_UP_S
    xs = [s.t / 3600 for s in samples if s.t >= cut and s.rss_mb]
    ys = [s.rss_mb for s in samples if s.t >= cut and s.rss_mb]
    slope = statistics.linear_regression(xs, ys).slope if len(xs) > 2 else float("nan")
    return slope, (xs[-1] - xs[0]) * 3600 if xs else 0.0


def main() -> int:
    print(machine(), flush=True)
    duration = MINUTES * 60
    with tempfile.TemporaryDirectory(prefix="wadm-soak-") as tmp_name, receiver() as hook:
        tmp = Path(tmp_name)
        mongo = Mongo(tmp)
        mongo.start()
        args = ("--symbols", "BTCUSDT,ETHUSDT,XRPUSDT", "--markets", "spot,usdm", "--bybit-markets", "spot,linear",
                "--bybit-symbols", "BTCUSDT,ETHUSDT,SOLUSDT", "--rate", "1", "--book", "on", "--seed", "21")
        try:
            with emulator(*args) as (_, emu_port):
                port = free_port()
                ws, http = f"ws://127.0.0.1:{emu_port}", f"http://127.0.0.1:{emu_port}"
                env = {
                    "WADM_BINANCE_SPOT_WS_URL": f"{ws}/binance/spot", "WADM_BINANCE_USDM_WS_URL": f"{ws}/binance/usdm",
                    "WADM_BYBIT_WS_URL": f"{ws}/bybit", "WADM_BINANCE_SPOT_REST_URL": f"{http}/binance/spot",
                    "WADM_BINANCE_USDM_REST_URL": f"{http}/binance/usdm", "WADM_BYBIT_REST_URL": f"{http}/bybit",
                    "COLLECTORS_START_DELAY": "0", "WADM_DATA_DIR": str(tmp / "wadm"), "MONGODB_URI": mongo.uri,
                    "WADM_HOST": "127.0.0.1", "WADM_PORT": str(port), "WADM_LOG_LEVEL": "WARNING",
                    "WADM_ALERT_WEBHOOK_URL": hook.url, "WADM_ALERT_AFTER": "30", "RETENTION_RAW_TRADES": "14400",
                    "WADM_BACKFILL_DEADLINE": "120",
                }
                run = Run(emu_port, mongo, env, port)
                for (venue, market, symbol), rate in REAL_RATES.items():
                    run.control("rate", rate=rate * SPEED, venue=venue, market=market, symbol=symbol)
                run.note(f"{MINUTES:g} minutes at {SPEED:g}x: {sum(REAL_RATES.values()) * SPEED:.0f} trades/s")
                run.start()
                assert run.app is not None
                done = threading.Event()
                sampler = threading.Thread(target=_sampler, args=(run, hook.bodies, done), daemon=True)
                sampler.start()
                for share, action, lasts in sorted(SCHEDULE):
                    time.sleep(max(0.0, run.started + share * duration - time.monotonic()))
                    short = min(1.0, MINUTES / 30) if SCHEDULE is SCHEDULES["day"] else 1.0
                    _act(run, action, lasts * short)  # outages as long as a short soak allows
                time.sleep(max(0.0, run.started + duration - time.monotonic()))
                run.control("pause")
                run.note("market paused; waiting for WADM to settle")
                wait_for(lambda: httpx.get(run.api + "/health", timeout=5).json()["store"]["spool"]["batches"] == 0,
                         300, "the spool to be empty", run.app)
                time.sleep(30)  # the last flushes and any backfill still running
                done.set()
                sampler.join()
                rows, _ = _reconcile(run)
                disk = _disk(run, tmp)
                code = stop(run.app, timeout=90)
                run.note(f"stopped: exit {code}")
        finally:
            mongo.kill()
        _report(run, rows, disk, hook.bodies, duration)
    return 0


def _report(run: Run, rows: list[dict[str, Any]], disk: dict[str, float], bodies: list[dict[str, Any]],
            duration: float) -> None:
    s = run.samples
    print("\n| minute | RSS MB | status | spool MB | alerts so far |\n|---|---|---|---|---|")
    for sample in s[:: max(1, len(s) // 20)]:
        print(f"| {sample.t / 60:.1f} | {sample.rss_mb:.0f} | {sample.status} | {sample.spool_bytes / 1e6:.1f} | "
              f"{sample.alerts} |")
    cpu = (s[-1].cpu_s - s[0].cpu_s) / (s[-1].t - s[0].t) if len(s) > 1 else float("nan")
    slope, span = _slope_mb_per_hour(s, run.events)
    print(f"\nRSS slope over the {span / 60:.0f} minutes after warm-up: {slope:.1f} MB/hour; RSS min/max "
          f"{min(x.rss_mb for x in s if x.rss_mb):.0f}/{max(x.rss_mb for x in s):.0f} MB; "
          f"CPU {cpu * 100:.0f} % of one core; spool peak {max(x.spool_bytes for x in s) / 1e6:.1f} MB")
    print("\n| series | made | stored | duplicates | not stored | gaps | gap missing | exact |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['series']} | {r['made']} | {r['stored']} | {r['duplicates']} | {r['not_stored']} | {r['gaps']} | "
              f"{r['gap_missing']} | {'yes' if r['exact'] else 'NO'} |")
    for began, ended in run.outages:
        before = [x.rss_mb for x in s if began - 3 * SAMPLE_S <= x.t <= began and x.rss_mb]
        during = [x.rss_mb for x in s if began <= x.t <= ended + SAMPLE_S and x.rss_mb]
        if before and during:
            print(f"store outage {began / 60:.1f}-{ended / 60:.1f} min: RSS {before[-1]:.0f} MB before, peak "
                  f"{max(during):.0f} MB during (growth {max(during) - before[-1]:.0f} MB); spool peak "
                  f"{max(x.spool_bytes for x in s if began <= x.t <= ended + SAMPLE_S) / 1e6:.1f} MB")
    alerts = [a for b in bodies for a in b.get("alerts", [])]
    counts: dict[tuple[str, str], int] = {}
    for a in alerts:
        counts[(a["name"], a["state"])] = counts.get((a["name"], a["state"]), 0) + 1
    print(f"\nalerts: {len(bodies)} POSTs, " + ", ".join(f"{n} {st} x{c}" for (n, st), c in sorted(counts.items())))
    print(f"disk: {disk['mongodb_bson_per_trade']:.1f} bytes per trade as MongoDB documents (BSON, before "
          f"WiredTiger's compression), {disk['sqlite_file_per_trade']:.1f} in SQLite ({disk['trades']:.0f} trades)")
    hours = duration / 3600
    print("stored per hour of soak, BSON MB by table: " + ", ".join(
        f"{k.removeprefix('bytes:')} {v / 1e6 / hours:.1f}" for k, v in sorted(disk.items()) if k.startswith("bytes:")))
    print("events: " + "; ".join(f"{t / 60:.1f} min {what}" for t, what in run.events))


if __name__ == "__main__":
    raise SystemExit(main())
