"""What API abuse costs the collectors: ``/health`` and venue-to-receive latency, quiet and under a burst.

A plain script (it runs real processes for minutes): ``uv run python bench/bench_api.py``.

1. Starts the exchange emulator (``wadm emulate``) with the deployment's default symbols on all
   four markets (the README's demo: Binance spot BTCUSDT/ETHUSDT/XRPUSDT, USD-M BTCUSDT, Bybit
   linear BTCUSDT/ETHUSDT/SOLUSDT, Bybit spot BTCUSDT; books on) at ``RATE`` trades/s per symbol,
   and ``wadm run`` with default settings pointed at it (trades, books and klines; the embedded
   store).
2. Fills the store with enough BTCUSDT spot trades for a full 10,000-row page (the emulator's
   rate is raised for a few seconds, then set back; the windows below start after that).
3. Baseline window (``BASELINE_S``): ``/health`` is polled every 100 ms, each time on a new
   connection, as a monitor would.
4. Burst window (``BURST_S``, the same polling): ``IDLE`` idle sockets are held open (half
   silent, half stopped mid request line; those the server closes after its 10 s head timeout
   are replaced), and waves of ``CONCURRENT`` concurrent heavy requests follow each other back to
   back, alternating ``trades?limit=10000`` and ``orderbook/history?limit=720&depth=100`` (the
   largest answer its bound allows at that depth).
5. Stops ``wadm run`` (SIGTERM: it writes everything buffered) and reads the stored trades of
   every series back from the store: the venue-to-receive latency of each trade is
   ``ts_recv - ts_event`` (our receive clock minus the emulator's trade time, both this machine's
   wall clock; the trade time has millisecond resolution). Trades are assigned to a window by
   ``ts_recv``. ``/metrics``' ``wadm_collector_receive_latency_seconds{quantile="0.99"}`` covers
   only the last batch of each series, so it is sampled every second and its maximum is reported
   beside the figures from the store.

Goals: ``/health`` answers in under 1 s, and the collectors' p99 venue-to-receive latency stays
under 250 ms, during the burst as in the baseline. The report gives each figure for both windows
and the ratio burst/baseline (the baseline is measured in the same run, STYLE.md convention 14).
Nothing here asserts on time. Note that the load generator (httpx, 200 connections, 2,000
sockets) runs on the same machine and competes for the same cores; its CPU share is reported.

Knobs (environment): ``WADM_BENCH_API_RATE`` (trades/s per symbol per market, default 50, as in
the README demo), ``WADM_BENCH_API_BASELINE_S`` (default 30), ``WADM_BENCH_API_BURST_S`` (default
30), ``WADM_BENCH_API_IDLE`` (default 2000), ``WADM_BENCH_API_CONCURRENT`` (default 200).
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import polars as pl

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.conftest import machine
from tests.conftest import free_port
from tests.helpers import Answer, concurrent_gets, poll
from tests.procs import Proc, emulator, granian_worker, raise_fd_limit, rss_mb, stop, wadm, wait_for
from wadm.config import DEFAULT_SYMBOLS
from wadm.records import TRADES, BatchKey
from wadm.store.sqlite import SqliteStore

RATE = float(os.environ.get("WADM_BENCH_API_RATE", "50"))
BASELINE_S = float(os.environ.get("WADM_BENCH_API_BASELINE_S", "30"))
BURST_S = float(os.environ.get("WADM_BENCH_API_BURST_S", "30"))
IDLE = int(os.environ.get("WADM_BENCH_API_IDLE", "2000"))
CONCURRENT = int(os.environ.get("WADM_BENCH_API_CONCURRENT", "200"))
FILL_RATE = 2000.0  # BTCUSDT spot trades/s while the store is filled for a full page
HEALTH_GOAL_S = 1.0
COLLECTOR_P99_GOAL_S = 0.250
HEAVY = ("/api/v1/trades/BTCUSDT?exchange=binance&market=spot&window=1h&limit=10000",
         "/api/v1/orderbook/BTCUSDT/history?exchange=binance&market=spot&window=1h&limit=720&depth=100")
_NS = 1_000_000_000


# -- load -----------------------------------------------------------------------------------------


class IdleHolder:
    """Keeps ``count`` idle connections open in a thread, replacing those the server closes."""

    def __init__(self, port: int, count: int) -> None:
        self.port = port
        self.count = count
        self.stop = threading.Event()
        self.opened = 0
        self.closed_by_server = 0
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _open(self, i: int) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        if i % 2:
            s.sendall(b"GET /api/v1/tra")
        s.setblocking(False)
        self.opened += 1
        return s

    def _run(self) -> None:
        import selectors

        sel = selectors.DefaultSelector()
        live: dict[int, socket.socket] = {}
        try:
            while not self.stop.is_set():
                while len(live) < self.count and not self.stop.is_set():
                    try:
                        s = self._open(self.opened)
                    except OSError as exc:
                        self.errors.append(repr(exc))
                        self.stop.wait(0.1)
                        break
                    live[s.fileno()] = s
                    sel.register(s, selectors.EVENT_READ)
                for key, _ in sel.select(0.2):
                    s = live[key.fd]
                    try:
                        data = s.recv(65536)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if not data:
                        sel.unregister(s)
                        del live[key.fd]
                        s.close()
                        self.closed_by_server += 1
        finally:
            for s in live.values():
                s.close()
            sel.close()

    def __enter__(self) -> IdleHolder:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)


@dataclass
class Waves:
    """Back-to-back waves of concurrent heavy requests, in a thread with its own event loop."""

    api: str
    stop: threading.Event = field(default_factory=threading.Event)
    answers: list[Answer] = field(default_factory=list)
    waves: int = 0

    def run(self) -> None:
        while not self.stop.is_set():
            path = HEAVY[self.waves % len(HEAVY)]
            self.answers += asyncio.run(concurrent_gets(self.api, [path] * CONCURRENT, request_timeout=120))
            self.waves += 1


class Sampler:
    """Every second: the worker's RSS and the largest last-batch p99 latency in ``/metrics``."""

    def __init__(self, api: str, worker: int) -> None:
        self.api = api
        self.worker = worker
        self.rss: list[float] = []
        self.metric_p99: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            mb = rss_mb(self.worker)
            if mb is not None:
                self.rss.append(mb)
            try:
                text = httpx.get(self.api + "/metrics", timeout=10).text
                values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                          if line.startswith("wadm_collector_receive_latency_seconds{")
                          and 'quantile="0.99"' in line and 'channel="trades"' in line]
                if values:
                    self.metric_p99.append(max(values))
            except (httpx.HTTPError, ValueError):
                pass
            self.stop.wait(1.0)

    def __enter__(self) -> Sampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)


def _cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Window:
    """One measured window."""

    name: str
    start_ns: int = 0
    end_ns: int = 0
    health: list[Answer] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)
    metric_p99: list[float] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)  # share of one core over the window
    heavy: list[Answer] = field(default_factory=list)
    waves: int = 0
    idle_opened: int = 0
    idle_closed: int = 0
    latency_ms: pl.DataFrame | None = None  # per trade: series, latency (ms)


def measure(name: str, seconds: float, app: Proc, worker: int, emu: Proc, api: str, port: int,
            burst: bool) -> Window:
    """Poll /health for ``seconds`` (with the burst and idle sockets when ``burst``)."""
    w = Window(name)
    pids = {"wadm worker": worker, "emulator": emu.popen.pid}
    cpu0 = {k: _cpu_s(p) for k, p in pids.items()}
    me0, t0 = time.process_time(), time.monotonic()
    w.start_ns = time.time_ns()
    stop_health = threading.Event()
    health: list[Answer] = []
    poller = threading.Thread(target=lambda: health.extend(poll(api + "/health", stop_health)), daemon=True)
    waves = Waves(api)
    idle = IdleHolder(port, IDLE)
    wave_thread = threading.Thread(target=waves.run, daemon=True)
    with Sampler(api, worker) as sampler:
        poller.start()
        if burst:
            idle.__enter__()
            wave_thread.start()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and app.popen.poll() is None:
            time.sleep(0.2)
        w.end_ns = time.time_ns()
        stop_health.set()
        if burst:
            waves.stop.set()
            wave_thread.join(180)
            idle.__exit__()
        poller.join(30)
    elapsed = time.monotonic() - t0
    w.cpu = {k: (_cpu_s(p) - cpu0[k]) / elapsed for k, p in pids.items()}
    w.cpu["load generator (this process)"] = (time.process_time() - me0) / elapsed
    w.health, w.rss, w.metric_p99 = health, sampler.rss, sampler.metric_p99
    w.heavy, w.waves = waves.answers, waves.waves
    w.idle_opened, w.idle_closed = idle.opened, idle.closed_by_server
    return w


# -- reading the store back -------------------------------------------------------------------------


async def stored_latencies(db: Path, start_ns: int, end_ns: int) -> pl.DataFrame:
    """``series``, ``ts_recv`` and ``latency_ms`` of every stored trade received in ``[start_ns, end_ns]``."""
    store = SqliteStore(db)
    await store.open()
    frames = []
    try:
        for (venue, market), symbols in DEFAULT_SYMBOLS.items():
            for symbol in symbols:
                # Trade times lie before receive times: read from a minute earlier.
                frame = await store.read(BatchKey(TRADES, venue, market, symbol), start_ns - 60 * _NS, end_ns)
                if frame.height:
                    frames.append(frame.select(
                        series=pl.lit(f"{venue}/{market}/{symbol}"),
                        ts_recv="ts_recv",
                        latency_ms=(pl.col("ts_recv") - pl.col("ts_event")) / 1e6,
                    ).filter(pl.col("ts_recv").is_between(start_ns, end_ns)))
    finally:
        await store.close()
    return pl.concat(frames) if frames else pl.DataFrame()


# -- report -----------------------------------------------------------------------------------------


def _q(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _pq(values: pl.Series, q: float) -> float:
    """The ``q`` quantile of ``values`` (the nearest value above), as a float."""
    return float(values.quantile(q, interpolation="higher") or 0.0)


def report(windows: list[Window], env_note: str) -> None:
    base, burst = windows
    print()
    print(machine())
    print(env_note)
    for w in windows:
        codes: dict[int, int] = {}
        for a in w.health:
            codes[a.status] = codes.get(a.status, 0) + 1
        print(f"\n{w.name}: {(w.end_ns - w.start_ns) / _NS:.0f} s; /health answers {codes}; CPU (share of one core) "
              + ", ".join(f"{k} {v:.0%}" for k, v in w.cpu.items()))
        if w.rss:
            print(f"  worker RSS median {statistics.median(w.rss):.0f} MB, max {max(w.rss):.0f} MB")
        if w.heavy:
            heavy: dict[int, int] = {}
            for a in w.heavy:
                heavy[a.status] = heavy.get(a.status, 0) + 1
            ok = [a.seconds for a in w.heavy if a.status == 200]
            refused = [a.seconds for a in w.heavy if a.status == 429]
            print(f"  heavy requests: {len(w.heavy)} in {w.waves} waves of {CONCURRENT}: {heavy}; 200 answered "
                  f"p50 {_q(ok, 0.5):.2f} s, max {max(ok, default=0):.2f} s; 429 answered p50 "
                  f"{_q(refused, 0.5) * 1e3:.0f} ms, max {max(refused, default=0) * 1e3:.0f} ms")
        if w.idle_opened:
            print(f"  idle sockets: {IDLE} held; {w.idle_opened} opened in all, {w.idle_closed} closed by the server")
        lat = w.latency_ms
        if lat is not None and lat.height:
            per = lat.group_by("series").agg(p99=pl.col("latency_ms").quantile(0.99, interpolation="higher"),
                                             n=pl.len())
            worst = per.sort("p99", descending=True).row(0, named=True)
            col = lat["latency_ms"]
            print(f"  stored trades received in the window: {lat.height:,}; latency p50 {_pq(col, 0.5):.1f} ms, "
                  f"p99 {_pq(col, 0.99):.1f} ms, max {_pq(col, 1.0):.1f} ms; worst series {worst['series']} "
                  f"p99 {worst['p99']:.1f} ms ({worst['n']:,} trades)")
        if w.metric_p99:
            print(f"  /metrics last-batch p99 (max over series), sampled each second: median "
                  f"{statistics.median(w.metric_p99) * 1e3:.1f} ms, max {max(w.metric_p99) * 1e3:.1f} ms")

    def health_q(w: Window, q: float) -> float:
        return _q([a.seconds for a in w.health if a.status], q)

    def collector_q(w: Window, q: float) -> float:
        lat = w.latency_ms
        return _pq(lat["latency_ms"], q) / 1e3 if lat is not None and lat.height else float("nan")

    rows: list[tuple[str, Callable[[Window], float], float | None]] = [
        ("/health p50", lambda w: health_q(w, 0.5), None),
        ("/health p99", lambda w: health_q(w, 0.99), HEALTH_GOAL_S),
        ("/health max", lambda w: max((a.seconds for a in w.health), default=float("nan")), HEALTH_GOAL_S),
        ("collector latency p50 (stored trades)", lambda w: collector_q(w, 0.5), None),
        ("collector latency p99 (stored trades)", lambda w: collector_q(w, 0.99), COLLECTOR_P99_GOAL_S),
        ("collector latency max (stored trades)", lambda w: collector_q(w, 1.0), None),
        ("collector p99 from /metrics (max sample)", lambda w: max(w.metric_p99, default=float("nan")), None),
    ]
    print("\n| figure | baseline | burst + idle sockets | burst / baseline | goal | met in the burst |")
    print("|---|---|---|---|---|---|")
    for name, fn, goal in rows:
        b, u = fn(base), fn(burst)
        ratio = f"x{u / b:.1f}" if b and b == b and u == u else "n/a"
        verdict = ("MET" if u < goal else "NOT MET") if goal is not None else ""
        goal_text = f"< {goal * 1e3:.0f} ms" if goal is not None else ""
        print(f"| {name} | {b * 1e3:.1f} ms | {u * 1e3:.1f} ms | {ratio} | {goal_text} | {verdict} |")


# -- main -------------------------------------------------------------------------------------------


def _env(emu_port: int, data: Path) -> dict[str, str]:
    ws, http = f"ws://127.0.0.1:{emu_port}", f"http://127.0.0.1:{emu_port}"
    return {
        # Symbols, channels, flush and API limits are the defaults: nothing set.
        "WADM_BINANCE_SPOT_WS_URL": f"{ws}/binance/spot",
        "WADM_BINANCE_USDM_WS_URL": f"{ws}/binance/usdm",
        "WADM_BYBIT_WS_URL": f"{ws}/bybit",
        "WADM_BINANCE_SPOT_REST_URL": f"{http}/binance/spot",
        "WADM_BINANCE_USDM_REST_URL": f"{http}/binance/usdm",
        "WADM_BYBIT_REST_URL": f"{http}/bybit",
        "COLLECTORS_START_DELAY": "0",
        "WADM_DATA_DIR": str(data),
        "WADM_LOG_LEVEL": "WARNING",
    }


def main() -> int:
    nofile = raise_fd_limit()  # wadm inherits it, as a container inherits its ulimits
    with tempfile.TemporaryDirectory(prefix="wadm-bench-api-") as tmp:
        data = Path(tmp)
        emu_args = ("--symbols", "BTCUSDT,ETHUSDT,XRPUSDT", "--markets", "spot,usdm", "--bybit-markets", "spot,linear",
                    "--bybit-symbols", "BTCUSDT,ETHUSDT,SOLUSDT", "--rate", f"{RATE:g}", "--book", "on", "--seed", "1")
        with emulator(*emu_args) as (emu, emu_port):
            port = free_port()
            api = f"http://127.0.0.1:{port}"

            def control(action: str, **params: str | float) -> None:
                httpx.get(f"http://127.0.0.1:{emu_port}/control/{action}", params=params, timeout=10).raise_for_status()

            with wadm("run", _env(emu_port, data), port, cwd=data) as app:
                wait_for(lambda: httpx.get(api + "/health", timeout=10).status_code == 200, 120,
                         "every stream to go live", app, interval=0.5)
                worker = granian_worker(app)
                control("rate", rate=FILL_RATE, symbol="BTCUSDT", market="spot", venue="binance")
                wait_for(lambda: httpx.get(api + HEAVY[0], timeout=60).json()["count"] == 10_000, 120,
                         "a full 10,000-trade page", app, interval=1)
                control("rate", rate=RATE, symbol="BTCUSDT", market="spot", venue="binance")
                time.sleep(5)  # the fill's backlog is written before the baseline starts
                print(f"filled; measuring {BASELINE_S:g} s quiet, then {BURST_S:g} s of burst", flush=True)
                base = measure("baseline (quiet)", BASELINE_S, app, worker, emu, api, port, burst=False)
                burst = measure("burst + idle sockets", BURST_S, app, worker, emu, api, port, burst=True)
                time.sleep(3)  # the last batches reach the store
                health = httpx.get(api + "/health", timeout=30).json()
                code = stop(app)
            windows = [base, burst]
            for w in windows:
                w.latency_ms = asyncio.run(stored_latencies(data / "wadm.db", w.start_ns, w.end_ns))
    note = (f"emulator: default symbols on 4 markets at {RATE:g} trades/s each, books on; wadm run with default "
            f"settings (embedded store); RLIMIT_NOFILE {nofile}; wadm exit code {code}; at the end: status "
            f"{health['status']}, store dropped rows {health['store']['dropped_rows']}, stream drops "
            f"{sum(s['dropped'] for s in health['streams'])}, reconnects "
            f"{sum(c['reconnects'] for c in health['connections'])}")
    report(windows, note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
