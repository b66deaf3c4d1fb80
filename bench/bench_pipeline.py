"""End-to-end ingest: emulator process -> loopback WebSocket -> wadm ``Service`` -> store.

The exchange emulator runs in another process (``wadm emulate``) with several synthetic spot
symbols whose total rate is far above what one collector can take, so the collector is the
bottleneck (the emulator holds a feed back while its socket buffer is full: the reader sets the
pace). wadm's :class:`~wadm.pipeline.service.Service` runs in this process on uvloop, exactly as
``wadm run`` builds it (one connection plan, the writer's cut and drain loops). After a warm-up,
trades written to the store are counted over a fixed window.

Variants, for each picows transport (``use_aiofastnet`` False and True):

* ``emulator max send (trivial client)``: a picows client that only counts frames: what the
  emulator can deliver to a reader that does nothing. The collector figures are compared with it.
* ``discard store (baseline)``: the full collector into a store that drops every batch
  (:class:`DiscardStore`), STYLE.md convention 14's pipeline baseline.
* ``sqlite store``: the embedded :class:`~wadm.store.sqlite.SqliteStore`, the default store.

Each repetition runs every variant once, in turn, so slow drifts in the machine's background
load spread over all of them. Besides rates, each sample notes the CPU share of the event-loop
thread and of the emulator process over the window (100% = one core): a saturated loop thread
with an emulator below 100% means the collector is the bottleneck.

A second test, ``test_sustained``, steps the offered rate up (``/control/rate`` on the
emulator) with the SQLite store and records the highest level at which everything received was
stored (no drop, a backlog that does not grow): under overload the collector keeps reading but
the store falls behind, so the overload figure and the sustained figure differ.

Target: >= 150,000 trades/s into the embedded store on a 2-core machine.

Run: ``uv run pytest bench/bench_pipeline.py --benchmark-only`` (about 8 minutes). Knobs
(environment): ``WADM_BENCH_SECONDS`` (window, default 10), ``WADM_BENCH_REPEAT`` (default 2),
``WADM_BENCH_SYMBOLS`` (default 4), ``WADM_BENCH_RATE`` (trades/s per symbol, default 400000),
``WADM_BENCH_LEVELS`` (total offered rates of ``test_sustained``, comma separated).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import picows
import polars as pl
import pytest
import uvloop

from bench.conftest import GROUPS, Row, group, record_rate
from wadm.config import Settings, StreamTarget
from wadm.pipeline.service import Service
from wadm.records import TRADE_SCHEMA_INT_ID, BatchKey, Market, Venue
from wadm.store.base import Store
from wadm.store.codec import Batch
from wadm.store.sqlite import SqliteStore
from wadm.venues.base import TradeStream

SECONDS = float(os.environ.get("WADM_BENCH_SECONDS", "10"))
REPEAT = int(os.environ.get("WADM_BENCH_REPEAT", "2"))
N_SYMBOLS = int(os.environ.get("WADM_BENCH_SYMBOLS", "4"))
RATE = float(os.environ.get("WADM_BENCH_RATE", "400000"))
WARMUP = 3.0
TARGET = 150_000
SYMBOLS = tuple(f"SYM{i}USDT" for i in range(N_SYMBOLS))
STREAMS = [f"{s.lower()}@aggTrade" for s in SYMBOLS]
TRIVIAL = "emulator max send (trivial client)"
DISCARD = "discard store (baseline)"
SQLITE = "sqlite store"
VARIANTS = (TRIVIAL, DISCARD, SQLITE)
TRANSPORTS = (False, True)


def _key(aiofastnet: bool) -> str:
    return f"pipeline-aiofastnet-{aiofastnet}"


def _check(rows: dict[str, Row]) -> str:
    if SQLITE not in rows:
        return ""
    rate = rows[SQLITE].value
    return f"-> sqlite {rate:,.0f}/s stored: {'MET' if rate >= TARGET else 'NOT MET'}"


for _t in TRANSPORTS:
    group(_key(_t), f"ingest: {N_SYMBOLS} spot symbols x {RATE:,.0f} trades/s offered, {SECONDS:g} s windows, "
          f"picows use_aiofastnet={_t}", kind="rate", baseline=DISCARD, reference=TRIVIAL,
          target=f">= {TARGET:,} trades/s into the embedded store", check=_check)


class DiscardStore:
    """A :class:`~wadm.store.base.Store` that accepts every batch and keeps nothing (the baseline)."""

    name = "discard"

    def __init__(self) -> None:
        self.batches = 0
        self.rows = 0

    async def open(self) -> None:
        """Nothing to open."""

    async def close(self) -> None:
        """Nothing to close."""

    async def write(self, key: BatchKey, batch: Batch) -> None:
        """Count the batch and drop it."""
        self.batches += 1
        self.rows += batch.count

    async def write_many(self, items: Sequence[tuple[BatchKey, Batch]]) -> None:
        """Count the batches and drop them."""
        for _, batch in items:
            self.batches += 1
            self.rows += batch.count

    async def read(self, key: BatchKey, start: int, end: int, *, max_rows: int | None = None) -> pl.DataFrame:
        """Nothing is ever stored."""
        return pl.DataFrame(schema=TRADE_SCHEMA_INT_ID)

    async def latest(self, key: BatchKey, *, before: int | None = None) -> pl.DataFrame:
        """Nothing is ever stored."""
        return pl.DataFrame()


class TimedStore:
    """Times each ``write_many`` of the store it wraps: (rows, seconds) per awaited store call."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.name = inner.name
        self.writes: list[tuple[int, float]] | None = None  # recording while not None

    async def write_many(self, items: Sequence[tuple[BatchKey, Batch]]) -> None:
        started = time.perf_counter()
        await self.inner.write_many(items)
        if self.writes is not None:
            self.writes.append((sum(b.count for _, b in items), time.perf_counter() - started))

    def __getattr__(self, name: str) -> Any:  # everything else as the wrapped store does it
        return getattr(self.inner, name)

    async def sweep(self, table: str, older_than: int) -> int:
        """Nothing to delete."""
        return 0

    async def healthcheck(self) -> bool:
        """Always healthy."""
        return True


_PROTOCOL_CHECK: type[Store] = DiscardStore  # mypy checks DiscardStore against the Store protocol


# -- the emulator process -----------------------------------------------------------------------


@dataclass
class EmulatorProc:
    """The ``wadm emulate`` child process."""

    popen: subprocess.Popen[str]
    port: int
    lines: list[str]
    pump: threading.Thread | None = None

    @property
    def spot_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/binance/spot"

    def control(self, action: str, **params: float | str) -> dict[str, Any]:
        """GET one of the emulator's ``/control/`` endpoints."""
        r = httpx.get(f"http://127.0.0.1:{self.port}/control/{action}", params=params, timeout=10)
        r.raise_for_status()
        body: dict[str, Any] = r.json()
        return body

    def stats(self) -> dict[str, Any]:
        """``/control/stats``: connections, per-stream counters, feeds."""
        return self.control("stats")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the emulator process so far."""
        fields = Path(f"/proc/{self.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_emulator(*args: str) -> EmulatorProc:
    """Start ``python -m wadm emulate --port 0 ARGS`` and wait for its port."""
    popen = subprocess.Popen(
        [sys.executable, "-m", "wadm", "emulate", "--port", "0", "--log-level", "WARNING", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True,
    )
    lines: list[str] = []
    found = threading.Event()
    port: list[int] = []

    def pump() -> None:
        assert popen.stdout is not None
        for line in popen.stdout:
            lines.append(line.rstrip("\n"))
            m = re.search(r"listening on ws://[\d.]+:(\d+)", line)
            if m and not port:
                port.append(int(m.group(1)))
                found.set()

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    if not found.wait(30):
        stop_emulator(EmulatorProc(popen, 0, lines, thread))
        raise RuntimeError("the emulator did not start:\n" + "\n".join(lines))
    return EmulatorProc(popen, port[0], lines, thread)


def stop_emulator(emu: EmulatorProc) -> None:
    """SIGTERM the emulator (this process started it) and wait; SIGKILL it if it hangs."""
    if emu.popen.poll() is None:
        emu.popen.send_signal(signal.SIGTERM)
        try:
            emu.popen.wait(20)
        except subprocess.TimeoutExpired:
            emu.popen.kill()
            emu.popen.wait()
    if emu.pump is not None:
        emu.pump.join(5)
    if emu.popen.stdout is not None:
        emu.popen.stdout.close()


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorProc]:
    emu = start_emulator("--symbols", ",".join(SYMBOLS), "--markets", "spot", "--rate", f"{RATE:g}", "--seed", "1")
    try:
        yield emu
    finally:
        stop_emulator(emu)


# -- one measurement ----------------------------------------------------------------------------


@dataclass
class Sample:
    """Counters over one measurement window."""

    seconds: float
    stored: int  # trades written to the store (0 for the trivial client)
    received: int  # frames taken by the client
    emulator_sent: int  # frames the emulator wrote to sockets
    loop_cpu: float  # CPU seconds of the event-loop thread
    process_cpu: float  # CPU seconds of this process, all threads
    emulator_cpu: float  # CPU seconds of the emulator process
    dropped: int = 0  # trades lost by the collector (buffer bound, store backlog)
    backlog: int = 0  # trades received but not yet stored at the end of the window
    backlog_growth: int = 0  # change of that backlog over the window: > 0 means the store falls behind
    loop_lag: list[float] = field(default_factory=list)  # how late a 10 ms timer fired, seconds
    writes: list[tuple[int, float]] = field(default_factory=list)  # (rows, seconds) per store write

    def rate(self, n: int) -> float:
        return n / self.seconds

    def describe(self) -> str:
        text = (f"received {self.rate(self.received):,.0f}/s, emulator sent {self.rate(self.emulator_sent):,.0f}/s, "
                f"loop thread {self.loop_cpu / self.seconds:.0%}, process {self.process_cpu / self.seconds:.0%}, "
                f"emulator {self.emulator_cpu / self.seconds:.0%} CPU")
        if self.loop_lag:
            lag = sorted(self.loop_lag)
            text += f"; loop lag p50 {_q(lag, 0.5) * 1e3:.1f} ms, p99 {_q(lag, 0.99) * 1e3:.0f} ms"
        if self.writes:
            took = sorted(w[1] for w in self.writes)
            rows = sum(w[0] for w in self.writes) / len(self.writes)
            text += (f"; {self.rate(len(self.writes)):.1f} store writes/s of {rows:,.0f} rows, each awaited "
                     f"p50 {_q(took, 0.5) * 1e3:.1f} ms, p90 {_q(took, 0.9) * 1e3:.0f} ms")
        if self.stored or self.backlog:
            text += (f"; dropped {self.dropped:,}, backlog {self.backlog:,} "
                     f"(growing {self.rate(self.backlog_growth):,.0f}/s)")
        return text


def _q(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _emulator_sent(stats: dict[str, Any]) -> int:
    return sum(s["frames_sent"] for s in stats["streams"] if s["market"] == "spot" and s["stream"] in STREAMS)


class _Counter(picows.WSListener):
    """A client that only counts frames."""

    def __init__(self) -> None:
        self.frames = 0

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        if frame.msg_type is picows.WSMsgType.TEXT:
            self.frames += 1
        elif frame.msg_type is picows.WSMsgType.CLOSE:
            transport.disconnect()


class _Window:
    """Snapshots taken at the start and end of the measurement window."""

    def __init__(self, emu: EmulatorProc) -> None:
        self.emu = emu

    async def snap(self) -> tuple[float, float, float, float, int]:
        stats = await asyncio.to_thread(self.emu.stats)
        return time.monotonic(), time.thread_time(), time.process_time(), self.emu.cpu_seconds(), _emulator_sent(stats)


async def _trivial(emu: EmulatorProc, aiofastnet: bool) -> Sample:
    url = f"{emu.spot_url}/stream?streams={'/'.join(STREAMS)}"
    transport, listener = await picows.ws_connect(_Counter, url, use_aiofastnet=aiofastnet,
                                                  max_frame_size=16 * 1024 * 1024)
    assert isinstance(listener, _Counter)
    try:
        await asyncio.sleep(WARMUP)
        w = _Window(emu)
        t0, l0, p0, e0, s0 = await w.snap()
        n0 = listener.frames
        await asyncio.sleep(SECONDS)
        n1 = listener.frames
        t1, l1, p1, e1, s1 = await w.snap()
    finally:
        transport.send_close(picows.WSCloseCode.OK)
        transport.disconnect()
    return Sample(t1 - t0, 0, n1 - n0, s1 - s0, l1 - l0, p1 - p0, e1 - e0)


async def _first_data(streams: list[TradeStream]) -> None:
    """Wait (up to 30 s) until every stream has delivered a message."""
    for _ in range(600):
        if all(st.messages for st in streams):
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("the collector received no data from the emulator")


def _settings(emu: EmulatorProc) -> Settings:
    return Settings(
        collectors_start_delay=0,
        targets=(StreamTarget(venue=Venue.BINANCE, market=Market.SPOT, symbols=SYMBOLS),),
        binance_spot_ws_url=emu.spot_url,
        channels=("trades",),
        data_dir=Path(tempfile.mkdtemp(prefix="wadm-bench-pipeline-")),  # its spool, if the store falls behind
    )


def _streams(svc: Service) -> list[TradeStream]:
    return [st for c in svc.collectors for st in c.streams.values() if isinstance(st, TradeStream)]


async def _window(svc: Service, store: TimedStore, emu: EmulatorProc) -> Sample:
    """Measure one window of a running service: counters, CPU, loop lag and store write times."""
    streams = _streams(svc)
    writes: list[tuple[int, float]] = []
    lags: list[float] = []

    def counters() -> tuple[int, int, int, int]:
        wst = svc.writer.stats
        received = sum(st.messages for st in streams)
        dropped = sum(st.dropped for st in streams) + sum(wst.dropped_rows.values())
        backlog = svc.writer.pending_rows + sum(st.pending for st in streams)
        return wst.rows, received, dropped, backlog

    async def probe() -> None:  # how late a 10 ms timer fires: the longest stretch the loop is busy
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.01)
            lags.append(time.perf_counter() - t - 0.01)

    w = _Window(emu)
    t0, l0, p0, e0, s0 = await w.snap()
    rows0, recv0, drop0, backlog0 = counters()
    store.writes = writes
    task = asyncio.create_task(probe())
    try:
        await asyncio.sleep(SECONDS)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        store.writes = None
    rows1, recv1, drop1, backlog1 = counters()
    t1, l1, p1, e1, s1 = await w.snap()
    return Sample(t1 - t0, rows1 - rows0, recv1 - recv0, s1 - s0, l1 - l0, p1 - p0, e1 - e0, drop1 - drop0,
                  backlog1, backlog1 - backlog0, lags, writes)


async def _collector(emu: EmulatorProc, store: Store, aiofastnet: bool) -> Sample:
    timed = TimedStore(store)
    svc = Service(_settings(emu), timed, use_aiofastnet=aiofastnet)  # type: ignore[arg-type]
    await svc.start()
    try:
        await _first_data(_streams(svc))
        await asyncio.sleep(WARMUP)
        sample = await _window(svc, timed, emu)
        reconnects = sum(c.link.state.reconnects for c in svc.collectors)
    finally:
        await svc.stop()
    assert reconnects == 0, "the collector reconnected during the window (dropped as a slow consumer?)"
    return sample


def measure(emu: EmulatorProc, variant: str, aiofastnet: bool, tmp: Path) -> Sample:
    """Run one variant for one window on a fresh uvloop event loop."""
    if variant == TRIVIAL:
        return uvloop.run(_trivial(emu, aiofastnet))
    store: Store = DiscardStore() if variant == DISCARD else SqliteStore(tmp / "wadm.db")
    return uvloop.run(_collector(emu, store, aiofastnet))


# Repetition-major order: each repetition runs every variant once, in turn.
CASES = [(rep, t, v) for rep in range(REPEAT) for t in TRANSPORTS for v in VARIANTS]


@pytest.mark.timeout(120 + 3 * SECONDS)
@pytest.mark.parametrize(("rep", "aiofastnet", "variant"), CASES,
                         ids=[f"rep{r}-aiofastnet={t}-{v.split(' (')[0]}" for r, t, v in CASES])
def test_ingest(benchmark: Any, emulator: EmulatorProc, tmp_path: Path, rep: int, aiofastnet: bool,
                variant: str) -> None:
    """Ingest for a fixed window; record trades stored per second (frames per second for the trivial client)."""
    benchmark.group = f"{_key(aiofastnet)} (wall time of one run: not a result, see the rates)"
    samples: list[Sample] = []
    benchmark.pedantic(lambda: samples.append(measure(emulator, variant, aiofastnet, tmp_path)),
                       rounds=1, iterations=1)
    (s,) = samples
    rate = s.rate(s.received if variant == TRIVIAL else s.stored)
    benchmark.extra_info.update(rate=rate, received=s.received, stored=s.stored, seconds=s.seconds)
    record_rate(_key(aiofastnet), variant, rate)
    sent = f" = x{s.stored / s.emulator_sent:.3f} of the emulator's send rate" if s.stored else ""
    GROUPS[_key(aiofastnet)].notes.append(f"rep {rep} {variant}: {rate:,.0f}/s{sent}; {s.describe()}")
    print(f"\n{variant} aiofastnet={aiofastnet}: {rate:,.0f}/s; {s.describe()}")


# -- the highest rate the embedded store sustains -------------------------------------------------

_LEVELS = os.environ.get("WADM_BENCH_LEVELS", "300000,400000,500000,550000,600000,650000")
LEVELS = tuple(float(x) for x in _LEVELS.split(","))
SUSTAINED = "sqlite store, highest sustained offered rate"


def _sustained_check(rows: dict[str, Row]) -> str:
    row = rows.get(SUSTAINED)
    if row is None:
        return ""
    return f"-> sqlite sustains {row.value:,.0f}/s: {'MET' if row.value >= TARGET else 'NOT MET'}"


for _t in TRANSPORTS:
    group(f"sustained-aiofastnet-{_t}", f"sustained: offered rate stepped {', '.join(f'{x:,.0f}' for x in LEVELS)} "
          f"trades/s in total; sqlite store; picows use_aiofastnet={_t}", kind="rate", baseline="",
          target=f">= {TARGET:,} trades/s into the embedded store, nothing left behind", check=_sustained_check)


def _kept_up(s: Sample, offered: float) -> bool:
    """Took what was offered and stored what it took.

    At least 95% of the offered rate received, nothing dropped, and a backlog that grew by no more
    than 5% of what was received or two batches per stream, whichever is larger (stored = received -
    backlog growth - drops; batches are cut every ``flush_interval`` or ``flush_rows`` rows, so the
    backlog swings by about a batch per stream even when the store keeps up).
    """
    slack = max(0.05 * s.received, 2 * N_SYMBOLS * Settings().flush_rows)
    return s.received >= 0.95 * offered * s.seconds and s.dropped == 0 and s.backlog_growth <= slack


async def _levels(emu: EmulatorProc, store: Store, aiofastnet: bool) -> list[tuple[float, Sample]]:
    await asyncio.to_thread(emu.control, "rate", rate=LEVELS[0] / N_SYMBOLS)
    timed = TimedStore(store)
    svc = Service(_settings(emu), timed, use_aiofastnet=aiofastnet)  # type: ignore[arg-type]
    out: list[tuple[float, Sample]] = []
    await svc.start()
    try:
        await _first_data(_streams(svc))
        for offered in LEVELS:
            await asyncio.to_thread(emu.control, "rate", rate=offered / N_SYMBOLS)
            await asyncio.sleep(WARMUP)
            sample = await _window(svc, timed, emu)
            out.append((offered, sample))
            if not _kept_up(sample, offered):
                break
    finally:
        await svc.stop()
        await asyncio.to_thread(emu.control, "rate", rate=RATE)
    return out


SUSTAINED_CASES = [(rep, t) for rep in range(REPEAT) for t in TRANSPORTS]


@pytest.mark.timeout(120 + len(LEVELS) * (SECONDS + WARMUP + 5))
@pytest.mark.parametrize(("rep", "aiofastnet"), SUSTAINED_CASES,
                         ids=[f"rep{r}-aiofastnet={t}" for r, t in SUSTAINED_CASES])
def test_sustained(benchmark: Any, emulator: EmulatorProc, tmp_path: Path, rep: int, aiofastnet: bool) -> None:
    """Step the offered rate up until the embedded store falls behind; record the last level it kept up with."""
    key = f"sustained-aiofastnet-{aiofastnet}"
    benchmark.group = f"{key} (wall time of one run: not a result, see the rates)"
    results: list[list[tuple[float, Sample]]] = []
    benchmark.pedantic(lambda: results.append(uvloop.run(_levels(emulator, SqliteStore(tmp_path / "wadm.db"),
                                                                     aiofastnet))), rounds=1, iterations=1)
    (levels,) = results
    kept = [offered for offered, s in levels if _kept_up(s, offered)]
    record_rate(key, SUSTAINED, max(kept, default=0.0))
    for offered, s in levels:
        verdict = "kept up" if _kept_up(s, offered) else "FELL BEHIND"
        GROUPS[key].notes.append(f"rep {rep} offered {offered:,.0f}/s: {verdict}; stored {s.rate(s.stored):,.0f}/s; "
                                 f"{s.describe()}")
