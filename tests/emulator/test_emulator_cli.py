"""The command line: start as a subprocess, read the port, stop with SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import sys
from pathlib import Path

import httpx
import pytest

from wadm.emulator.cli import add_arguments, build_emulator

from .conftest import Connect
from .helpers import eventually

pytestmark = [pytest.mark.timeout(30)]

LINE = re.compile(
    r"emulator listening on ws://127\.0\.0\.1:(\d+) "
    r"\(binance spot: ws://127\.0\.0\.1:\1/binance/spot, "
    r"binance usdm: ws://127\.0\.0\.1:\1/binance/usdm, "
    r"bybit spot: ws://127\.0\.0\.1:\1/bybit/v5/public/spot, "
    r"bybit linear: ws://127\.0\.0\.1:\1/bybit/v5/public/linear\)"
)


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_arguments_build_the_configured_emulator(tmp_path: Path) -> None:
    recording = tmp_path / "spot_sample.gz"
    recording.write_bytes(b"")
    args = _parse(
        "--port", "0", "--symbols", "btcusdt,ETHUSDT", "--markets", "usdm",
        "--rate", "25", "--replay", str(recording), "--speed", "0", "--loop",
        "--max-lifetime", "30", "--ping-interval", "2", "--seed", "3",
    )  # fmt: skip
    emu = build_emulator(args)
    assert sorted(emu.feeds) == [
        ("binance", "usdm", "BTCUSDT"),
        ("binance", "usdm", "ETHUSDT"),
    ]
    assert all(feed.rate == 25 for feed in emu.feeds.values())
    usdm = emu.binance.policies["usdm"]
    assert (usdm.max_lifetime, usdm.ping_interval, usdm.max_messages_per_s) == (30, 2, 10)
    assert emu.binance.policies["spot"].max_messages_per_s == 5
    both = build_emulator(
        _parse("--symbols", "ETHUSDT", "--bybit-markets", "linear", "--book", "on", "--bybit-idle-timeout", "30")
    )
    assert sorted(both.feeds) == [
        ("binance", "spot", "ETHUSDT"),
        ("binance", "usdm", "ETHUSDT"),
        ("bybit", "linear", "ETHUSDT"),
    ]
    assert all(feed.model is not None for feed in both.feeds.values())
    assert both.bybit.policies["linear"].idle_timeout == 30
    with pytest.raises(ValueError, match="unknown Bybit market"):
        build_emulator(_parse("--bybit-markets", "inverse"))
    with pytest.raises(ValueError, match="cannot infer the market"):
        build_emulator(_parse("--replay", str(tmp_path / "x.gz")))
    assert not build_emulator(_parse("--replay", str(recording))).feeds


@pytest.mark.asyncio
async def test_cli_process_serves_until_sigterm(connect: Connect) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "wadm.emulator", "--port", "0", "--rate", "100", "--seed", "1",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 15)
        match = LINE.fullmatch(line.decode().strip())
        assert match, line
        port = int(match.group(1))
        client = await connect(f"ws://127.0.0.1:{port}/binance/usdm/ws/btcusdt@trade")
        await eventually(lambda: len(client.data()) >= 3)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as api:
            assert (await api.get("/control/health")).json() == {"ok": True, "port": port}
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
        await asyncio.wait_for(client.disconnected.wait(), 5)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
