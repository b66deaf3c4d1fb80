"""Replay of recorded sessions: routing, rebased timestamps, pacing and looping."""

from __future__ import annotations

import gzip
import time
from pathlib import Path

import orjson
import pytest

from wadm.emulator import Emulator, ReplaySpec

from .conftest import Connect
from .helpers import eventually, ids

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]

DATA = Path(__file__).resolve().parents[1] / "data" / "binance"
SPOT_RECORDING = DATA / "spot_btcusdt_20240808.gz"
SPOT_TRADES = 9757  # @trade lines in the spot recording
SPOT_TICKERS = 28040  # @bookTicker lines


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _write_recording(path: Path, trade_ids: list[int], step_ms: int = 20) -> Path:
    """Write a small usdm recording: trades, a depth diff and an inline REST snapshot."""
    e0 = 1_723_161_256_322
    lines = []
    for i, tid in enumerate(trade_ids):
        data = {
            "e": "trade",
            "E": e0 + i * step_ms,
            "T": e0 + i * step_ms - 1,
            "s": "BTCUSDT",
            "t": tid,
            "p": "61800.30",
            "q": "0.006",
            "X": "MARKET",
            "m": False,
        }
        frame = {"stream": "btcusdt@trade", "data": data}
        lines.append(b"%d %s" % ((e0 + i * step_ms) * 1_000_000, orjson.dumps(frame)))
    depth = {
        "stream": "btcusdt@depth@0ms",
        "data": {"e": "depthUpdate", "E": e0, "T": e0, "s": "BTCUSDT", "U": 5, "u": 9, "pu": 4},
    }
    lines.insert(1, b"%d %s" % (e0 * 1_000_000, orjson.dumps(depth)))
    lines.insert(2, b'%d {"lastUpdateId":7,"bids":[],"asks":[]}' % (e0 * 1_000_000))
    with gzip.open(path, "wb") as fh:
        fh.write(b"\n".join(lines) + b"\n")
    return path


async def test_replay_recording_as_fast_as_possible(connect: Connect) -> None:
    async with Emulator() as emu:
        streams = "btcusdt@trade/btcusdt@bookTicker/btcusdt@depth@100ms"
        client = await connect(f"{emu.urls['binance']['spot']}/stream?streams={streams}")
        started = _now_ms()
        handle = emu.add_replay(ReplaySpec(path=SPOT_RECORDING, market="spot", speed=0))
        await handle.wait()
        await eventually(lambda: len(client.data("btcusdt@trade")) == SPOT_TRADES, within=15)
        trades = client.data("btcusdt@trade")
        first = trades[0]
        # Exact real shape, timestamps rebased to "now", E - T preserved (343 - 342).
        assert list(first) == ["e", "E", "s", "t", "p", "q", "T", "m", "M"]
        assert first["t"] == 3735683259 and first["p"] == "61837.63000000"
        assert first["E"] - first["T"] == 1
        assert started - 60_000 < first["E"] < _now_ms() + 60_000
        depth = client.data("btcusdt@depth@100ms")
        assert started - 60_000 < depth[0]["E"] <= first["E"]
        tickers = client.data("btcusdt@bookTicker")
        assert len(tickers) == SPOT_TICKERS and "E" not in tickers[0]  # no time field
        assert not any("lastUpdateId" in m.get("data", {}) for m in client.messages())
        assert emu.delivered("btcusdt@trade", "spot") == ids(trades, "t")
        assert handle.done and handle.passes == 1


async def test_replay_routes_and_waits_for_a_subscriber(connect: Connect, tmp_path: Path) -> None:
    recording = _write_recording(tmp_path / "usdm_sample.gz", [10, 11, 12], step_ms=5)
    async with Emulator() as emu:
        handle = emu.add_replay(ReplaySpec(path=recording, market="usdm", speed=0, wait_for_subscriber=True))
        url = emu.urls["binance"]["usdm"]
        wrong = await connect(f"{url}/market/stream?streams=btcusdt@trade")
        right = await connect(f"{url}/public/ws/btcusdt@trade")
        await handle.wait()
        await eventually(lambda: len(right.data()) == 3)
        assert ids(right.data(), "t") == [10, 11, 12]
        assert wrong.data() == []


async def test_replay_real_time_loop_rebases_and_shifts_ids(connect: Connect, tmp_path: Path) -> None:
    recording = _write_recording(tmp_path / "rec.gz", [100, 101, 102], step_ms=40)
    async with Emulator() as emu:
        client = await connect(emu.urls["binance"]["usdm"] + "/stream?streams=btcusdt@trade")
        started = _now_ms()
        handle = emu.add_replay(ReplaySpec(path=recording, market="usdm", speed=1.0, loop=True))
        await eventually(lambda: len(client.data()) >= 9)
        await handle.stop()
        trades = client.data()
        trade_ids = ids(trades, "t")
        assert trade_ids[:9] == [100, 101, 102, 103, 104, 105, 106, 107, 108]
        assert emu.delivered("btcusdt@trade", "usdm") == trade_ids
        # Rebased to now, spacing kept (40 ms), T - E kept (-1).
        assert started - 5_000 < trades[0]["E"] < _now_ms() + 5_000
        assert trades[1]["E"] - trades[0]["E"] == 40
        assert all(t["T"] == t["E"] - 1 for t in trades)
        assert handle.passes >= 2
