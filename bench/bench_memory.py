"""Resident memory of ``wadm run`` with an hour of trades retained, while ingesting and serving.

A plain script (it runs real processes for minutes): ``uv run python bench/bench_memory.py``.

1. Pre-fills the embedded store (``$WADM_DATA_DIR/wadm.db``) with one hour of trades for 6
   symbols at 500 trades/s each (10.8 million trades), written as wadm writes them: one batch per
   symbol per second, encoded by :func:`~wadm.store.codec.encode_batch` and stored by
   :class:`~wadm.store.sqlite.SqliteStore`, timestamps within the last hour.
2. Starts the exchange emulator (``wadm emulate``) with the same 6 spot symbols at 500 trades/s
   each, and ``python -m wadm run`` (Granian: a main process and one worker) pointed at it.
3. Samples VmRSS of the main process and every descendant from ``/proc`` once per second:
   first with ingest only (the same-run baseline), then while a client pages through
   ``/api/v1/trades/{symbol}?market=spot&window=1h`` over HTTP, symbol after symbol, following
   the ``next`` cursor to the end of the hour.

Target: < 300 MB resident. Knobs (environment): ``WADM_BENCH_MEMORY_BASELINE_S`` (ingest-only
phase, default 30), ``WADM_BENCH_MEMORY_PAGING_S`` (default 120), ``WADM_BENCH_MEMORY_LIMIT``
(page size, default 10000, the API's maximum), ``WADM_BENCH_MEMORY_PREFILL_S`` (seconds of trades
pre-filled, default 3600).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import polars as pl

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_pipeline import start_emulator, stop_emulator
from bench.conftest import machine
from wadm.records import TRADES, BatchKey, Market, Venue
from wadm.store.codec import encode_batch
from wadm.store.sqlite import SqliteStore

SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "BNBUSDT", "ADAUSDT")
RATE = 500  # trades/s per symbol
PREFILL_S = int(os.environ.get("WADM_BENCH_MEMORY_PREFILL_S", "3600"))
BASELINE_S = float(os.environ.get("WADM_BENCH_MEMORY_BASELINE_S", "30"))
PAGING_S = float(os.environ.get("WADM_BENCH_MEMORY_PAGING_S", "120"))
LIMIT = int(os.environ.get("WADM_BENCH_MEMORY_LIMIT", "10000"))
TARGET_MB = 300.0
_NS = 1_000_000_000


# -- pre-fill ---------------------------------------------------------------------------------


def hour_of_trades(symbol_index: int, end_ns: int) -> pl.DataFrame:
    """``PREFILL_S`` seconds of ``RATE`` trades/s ending at ``end_ns``, in the stored trade schema."""
    n = PREFILL_S * RATE
    start = end_ns - PREFILL_S * _NS
    i = pl.int_range(0, n, dtype=pl.Int64)
    bits = i.hash(seed=symbol_index)
    step = (bits % 3).cast(pl.Int64) - 1  # a random walk on a 0.01 grid
    return pl.select(
        ts_event=start + (i // RATE) * _NS + (i % RATE) * (_NS // RATE),
        ts_recv=start + (i // RATE) * _NS + (i % RATE) * (_NS // RATE) + 3_000_000,
        id=i + 1_000_000_000,
        price=100.0 * (symbol_index + 1) + step.cum_sum().cast(pl.Float64) * 0.01,
        qty=((bits // 3) % 100_000 + 1).cast(pl.Float64) / 100_000,
        side=pl.when((bits // 300_000) % 2 == 0).then(1).otherwise(-1).cast(pl.Int8),
    )


async def prefill(path: Path, end_ns: int) -> int:
    """Write one batch per symbol per second through ``SqliteStore``; return the trades written."""
    store = SqliteStore(path)
    await store.open()
    written = 0
    try:
        for k, symbol in enumerate(SYMBOLS):
            frame = hour_of_trades(k, end_ns)
            key = BatchKey(TRADES, Venue.BINANCE, Market.SPOT, symbol)
            for second in range(PREFILL_S):
                await store.write(key, encode_batch(frame.slice(second * RATE, RATE)))
            written += frame.height
    finally:
        await store.close()
    return written


# -- processes --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def wadm_run(env: dict[str, str], cwd: Path) -> Iterator[subprocess.Popen[str]]:
    """Run ``python -m wadm run``; SIGTERM it (this script started it) on exit."""
    popen = subprocess.Popen([sys.executable, "-m", "wadm", "run"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env={**os.environ, **env}, cwd=cwd,
                             start_new_session=True)
    lines: list[str] = []

    def pump() -> None:
        assert popen.stdout is not None
        for line in popen.stdout:
            lines.append(line.rstrip("\n"))

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    try:
        yield popen
    finally:
        if popen.poll() is None:
            popen.send_signal(signal.SIGTERM)
            try:
                popen.wait(60)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()
        thread.join(5)
        if popen.stdout is not None:
            popen.stdout.close()
        errors = [line for line in lines if " ERROR " in line or "Traceback" in line]
        if errors:
            print("wadm logged errors:\n  " + "\n  ".join(errors[:20]))


def _status(pid: int, field_name: str) -> float | None:
    """A ``/proc/<pid>/status`` size field (VmRSS, VmHWM) in MB, or None if the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


def descendants(root: int) -> list[int]:
    """``root`` and every process below it, from the ppid field of ``/proc/<pid>/stat``."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


@dataclass
class Samples:
    """RSS samples per phase and process."""

    rss: dict[str, dict[int, list[float]]] = field(default_factory=dict)  # phase -> pid -> MB
    total: dict[str, list[float]] = field(default_factory=dict)  # phase -> summed MB

    def take(self, phase: str, pids: list[int]) -> None:
        total = 0.0
        for pid in pids:
            mb = _status(pid, "VmRSS")
            if mb is not None:
                self.rss.setdefault(phase, {}).setdefault(pid, []).append(mb)
                total += mb
        self.total.setdefault(phase, []).append(total)


@dataclass
class Pager:
    """Pages through the last hour of each symbol, over and over, until stopped."""

    api: str
    pages: int = 0
    trades: int = 0
    passes: int = 0
    errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(base_url=self.api, timeout=60) as client:
            while not self.stop.is_set():
                for symbol in SYMBOLS:
                    params: dict[str, str | int] = {"market": "spot", "window": "1h", "limit": LIMIT}
                    while not self.stop.is_set():
                        t0 = time.perf_counter()
                        r = client.get(f"/api/v1/trades/{symbol}", params=params)
                        self.latencies.append(time.perf_counter() - t0)
                        if r.status_code != 200:
                            self.errors.append(f"{r.status_code} {r.text[:200]}")
                            return
                        body = r.json()
                        self.pages += 1
                        self.trades += body["count"]
                        if body["next"] is None:
                            break
                        params["cursor"] = body["next"]
                    if self.stop.is_set():
                        return
                self.passes += 1


def main() -> int:
    print(machine())
    with tempfile.TemporaryDirectory(prefix="wadm-bench-memory-") as tmp:
        data = Path(tmp) / "data"
        t0 = time.monotonic()
        written = asyncio.run(prefill(data / "wadm.db", time.time_ns()))
        size = (data / "wadm.db").stat().st_size
        print(f"pre-filled {written:,} trades ({len(SYMBOLS)} x {RATE}/s x {PREFILL_S} s) in "
              f"{time.monotonic() - t0:.0f} s; store file {size / 1e6:.0f} MB")

        emu = start_emulator("--symbols", ",".join(SYMBOLS), "--markets", "spot", "--rate", str(RATE),
                             "--seed", "1", "--book", "on")
        port = free_port()
        env = {
            "WADM_DATA_DIR": str(data),
            "WADM_HOST": "127.0.0.1",
            "WADM_PORT": str(port),
            "BINANCE_SYMBOLS": ",".join(SYMBOLS),
            "BINANCE_USDM_SYMBOLS": "",
            "BYBIT_SYMBOLS": "",
            "BYBIT_SPOT_SYMBOLS": "",
            "COLLECTORS_START_DELAY": "0",
            "WADM_BINANCE_SPOT_WS_URL": emu.spot_url,
            # Books (REST snapshots from the emulator) and klines too: the memory of a full setup.
            "WADM_BINANCE_SPOT_REST_URL": emu.spot_url.replace("ws://", "http://", 1),
            "PYTHONUNBUFFERED": "1",
        }
        api = f"http://127.0.0.1:{port}"
        samples = Samples()
        pager = Pager(api)
        try:
            with wadm_run(env, cwd=Path(tmp)) as proc:
                deadline = time.monotonic() + 60
                while True:
                    try:
                        if httpx.get(api + "/health", timeout=5).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    if proc.poll() is not None or time.monotonic() > deadline:
                        print("wadm did not become healthy")
                        return 1
                    time.sleep(0.5)
                pids = descendants(proc.pid)
                print("processes: " + "; ".join(f"{pid}: {_cmdline(pid)[:80]}" for pid in pids))
                rows0 = httpx.get(api + "/health", timeout=10).json()["store"]["written_rows"]
                started = time.monotonic()
                phase_end = started + BASELINE_S
                while time.monotonic() < phase_end:
                    samples.take("ingest only", descendants(proc.pid))
                    time.sleep(1)
                thread = threading.Thread(target=pager.run, daemon=True)
                thread.start()
                paging_started = time.monotonic()
                phase_end = paging_started + PAGING_S
                while time.monotonic() < phase_end and thread.is_alive():
                    samples.take("ingest + paging", descendants(proc.pid))
                    time.sleep(1)
                pager.stop.set()
                thread.join(120)
                paging_s = time.monotonic() - paging_started
                health = httpx.get(api + "/health", timeout=10).json()
                elapsed = time.monotonic() - started
                hwm = {pid: _status(pid, "VmHWM") for pid in descendants(proc.pid)}
        finally:
            stop_emulator(emu)

    print()
    print(f"ingest: {(health['store']['written_rows'] - rows0) / elapsed:,.0f} trades/s stored "
          f"(offered {len(SYMBOLS) * RATE:,}/s), dropped {health['store']['dropped_rows']}, status {health['status']}")
    lat = sorted(pager.latencies) or [0.0]
    print(f"paging: {pager.pages} pages of up to {LIMIT} trades ({pager.trades:,} trades, {pager.passes} full passes "
          f"over {len(SYMBOLS)} symbols) in {paging_s:.0f} s; page latency p50 {lat[len(lat) // 2] * 1e3:.0f} ms, "
          f"max {lat[-1] * 1e3:.0f} ms; errors {len(pager.errors)} {pager.errors[:1]}")
    print()
    print(f"{'phase':<18} {'process':<42} {'median MB':>10} {'max MB':>8}")
    for phase, per_pid in samples.rss.items():
        for pid, values in per_pid.items():
            print(f"{phase:<18} {_role(pid, proc.pid):<42} "
                  f"{statistics.median(values):10.1f} {max(values):8.1f}")
        totals = samples.total[phase]
        print(f"{phase:<18} {'all processes (sum)':<42} {statistics.median(totals):10.1f} {max(totals):8.1f}")
    peak = max(max(v) for v in samples.total.values())
    base = statistics.median(samples.total.get("ingest only", [0.0]))
    print("VmHWM (peak RSS over the process lifetime): "
          + ", ".join(f"{_role(pid, proc.pid)} {mb:.1f} MB" for pid, mb in hwm.items() if mb is not None))
    print(f"\npeak total RSS {peak:.1f} MB (x{peak / base:.2f} of the ingest-only median {base:.1f} MB); "
          f"target < {TARGET_MB:.0f} MB: {'MET' if peak < TARGET_MB else 'NOT MET'}")
    return 0


def _role(pid: int, root: int) -> str:
    return f"main (pid {pid})" if pid == root else f"worker/child (pid {pid})"


if __name__ == "__main__":
    raise SystemExit(main())
