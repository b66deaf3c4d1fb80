"""End to end: ``wadm run`` as a real process against the emulator in another process.

The emulator's synthetic BTCUSDT spot market streams aggTrades; we cut the connection
several times, send ``serverShutdown`` mid-stream and malformed frames, then read every trade
back over HTTP with cursor paging and compare with what the emulator actually delivered over a
socket: each delivered trade must be stored exactly once, in order.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.procs import Proc, emulator, stop, stored_trade_ids, wadm, wait_for

pytestmark = pytest.mark.e2e

STALE_AFTER = 3


def _env(emulator_port: int, data: Path) -> dict[str, str]:
    return {
        "BINANCE_SYMBOLS": "BTCUSDT",
        "BINANCE_USDM_SYMBOLS": "",
        "BYBIT_SYMBOLS": "",
        "BYBIT_SPOT_SYMBOLS": "",
        "WADM_BINANCE_SPOT_WS_URL": f"ws://127.0.0.1:{emulator_port}/binance/spot",
        "WADM_BINANCE_SPOT_REST_URL": f"http://127.0.0.1:{emulator_port}/binance/spot",
        "WADM_CHANNELS": "trades",
        "WADM_BACKFILL_DEADLINE": "2",
        "COLLECTORS_START_DELAY": "0",
        "WADM_STALE_AFTER": str(STALE_AFTER),
        "WADM_RECONNECT_MIN_DELAY": "0.05",
        "WADM_RECONNECT_MAX_DELAY": "0.5",
        "WADM_FLUSH_INTERVAL": "0.2",
        "WADM_DATA_DIR": str(data),
    }


class Setup:
    def __init__(self, emu: Proc, emu_port: int, app: Proc, api: str, data: Path) -> None:
        self.emu, self.emu_port, self.app, self.api, self.data = emu, emu_port, app, api, data
        self.stopped = False

    def control(self, action: str, **params: Any) -> dict[str, Any]:
        r = httpx.get(f"http://127.0.0.1:{self.emu_port}/control/{action}", params=params, timeout=10)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    def health(self) -> httpx.Response:
        return httpx.get(self.api + "/health", timeout=5)

    def connected(self) -> bool:
        """Healthy, and the emulator holds exactly our one connection (a drop now reaches it)."""
        return self.health().status_code == 200 and len(self.control("stats")["connections"]) == 1

    def delivered(self) -> list[int]:
        """Trade ids the emulator sent to us so far."""
        ids: list[int] = self.control("delivered", stream="btcusdt@aggTrade", market="spot")["ids"]
        return ids

    def generated(self) -> int:
        """Trades the emulator's market has generated so far (delivered to anyone or not)."""
        return int(self.control("stats")["feeds"][0]["generated"])

    def more_trades(self, n: int = 200) -> None:
        """Wait until the market has generated ``n`` more trades."""
        start = self.generated()
        wait_for(lambda: self.generated() >= start + n, 30, f"{n} more trades", self.emu)

    def received(self, ids: list[int]) -> bool:
        """True when our stream has taken as many frames as the emulator delivered (none in flight)."""
        return int(self.health().json()["streams"][0]["messages"]) >= len(ids)

    def recover_and_freeze(self) -> list[int]:
        """Wait for the stream to be healthy again, stop the market, return the ids delivered to us."""
        wait_for(lambda: self.health().status_code == 200, 30, "the stream to recover", self.app)
        self.more_trades(600)
        self.control("pause")
        return self.delivered()


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    with emulator("--symbols", "BTCUSDT", "--markets", "spot", "--rate", "200", "--seed", "7") as (emu, emu_port):
        port = free_port()
        with wadm("run", _env(emu_port, tmp_path), port) as app:
            s = Setup(emu, emu_port, app, f"http://127.0.0.1:{port}", tmp_path)
            wait_for(lambda: s.health().status_code == 200, 30, "the stream to go live", app)
            yield s
            assert s.stopped or app.popen.poll() is None, "wadm exited on its own:\n" + app.output


def test_every_delivered_trade_is_stored_once_through_faults(setup: Setup) -> None:
    # The venue's REST API is down for this test: nothing can be backfilled, so every trade
    # missed while cut off must show up in /api/v1/gaps.
    setup.control("rest_status", status=503, count=1_000_000, market="spot")
    setup.more_trades()
    dropped = setup.control("drop")["affected"]
    wait_for(setup.connected, 30, "the stream to come back", setup.app)
    setup.more_trades()
    dropped += setup.control("drop", graceful=1)["affected"]
    wait_for(setup.connected, 30, "the stream to come back", setup.app)
    # Malformed frames go to the connections open at that moment; retry until ours got them.
    for kind, count in (("invalid_json", 3), ("unknown_event", 2)):
        wait_for(lambda k=kind, c=count: setup.control("malformed", count=c, kind=k)["affected"] == 1, 10,
                 f"{kind} frames to reach our connection", setup.app)
    # Zero-price frames spend trade ids: delivered ones are not trades and not missing either.
    zero_delivered = 2 * setup.control("malformed", count=2, kind="zero_price")["affected"]
    setup.control("shutdown", grace=2)  # serverShutdown mid-stream: make before break
    wait_for(lambda: setup.health().json()["connections"][0]["rotations"] == 1 and setup.connected(), 30,
             "the make-before-break rotation", setup.app)
    setup.more_trades()
    dropped += setup.control("drop")["affected"]
    delivered = setup.recover_and_freeze()
    assert len(delivered) > 1000

    stored: list[int] = []

    def caught_up() -> bool:
        stored[:] = stored_trade_ids(setup.api, limit=997)
        return len(stored) >= len(delivered)

    wait_for(caught_up, 30, "every delivered trade to be stored", setup.app, interval=0.5)
    assert stored == delivered  # exactly once, in order

    # Trades the emulator generated while we were cut off are recorded as gaps (ids skipped);
    # the zero-price frames spent two ids that were delivered but are not trades.
    expected_missing = delivered[-1] - delivered[0] + 1 - len(delivered) - zero_delivered
    assert expected_missing > 0
    gaps: dict[str, Any] = {}

    def all_gaps_recorded() -> bool:
        gaps.update(httpx.get(setup.api + "/api/v1/gaps", params={"symbol": "BTCUSDT", "window": "1h"},
                              timeout=10).json())
        return sum(g["missing"] for g in gaps["gaps"]) >= expected_missing

    wait_for(all_gaps_recorded, 30, "the backfills to give up and record the gaps", setup.app, interval=0.5)
    assert sum(g["missing"] for g in gaps["gaps"]) == expected_missing, gaps
    assert {g["reason"] for g in gaps["gaps"]} == {"missing_ids"}
    page = httpx.get(setup.api + "/api/v1/trades/BTCUSDT", params={"window": "1h", "limit": 10}, timeout=10).json()
    assert page["data_complete"] is False and page["gaps"] == gaps["gaps"]

    body = setup.health().json()
    conn = body["connections"][0]
    assert conn["rotations"] >= 1, conn  # serverShutdown was handled make-before-break
    assert dropped >= 2 and conn["reconnects"] >= dropped + conn["rotations"], (conn, dropped, setup.app.output)
    assert conn["errors"].get("invalid_json") == 3 and conn["errors"].get("unknown_event") == 2, conn
    metrics = httpx.get(setup.api + "/metrics", timeout=5).text
    for name in ("wadm_collector_messages_total", "wadm_collector_trades_total", "wadm_collector_errors_total",
                 "wadm_transport_reconnects_total", "wadm_transport_rotations_total",
                 "wadm_collector_receive_latency_seconds", "wadm_writer_flush_rows_bucket",
                 "wadm_writer_flush_duration_seconds_bucket", "wadm_buffer_rows", "wadm_buffer_dropped_rows_total",
                 "wadm_writer_pending_rows"):
        assert f"\n{name}{{" in metrics or f"\n{name} " in metrics, name
    assert 'wadm_collector_errors_total{connection="binance/spot/trades/0",kind="invalid_json"} 3.0' in metrics
    rejected = 'wadm_collector_rejected_trades_total{channel="trades",market="spot",symbol="BTCUSDT",venue="binance"}'
    assert f"{rejected} {float(zero_delivered)}" in metrics


def test_missed_trades_are_backfilled_over_rest(setup: Setup) -> None:
    setup.more_trades()
    dropped = 0
    for _ in range(3):
        wait_for(setup.connected, 30, "the stream to be back", setup.app)
        dropped += setup.control("drop")["affected"]
        wait_for(lambda: setup.health().status_code == 503, 10, "the drop to be noticed", setup.app, interval=0.02)
    delivered = setup.recover_and_freeze()
    assert dropped == 3 and len(delivered) > 500
    expected = list(range(delivered[0], delivered[-1] + 1))  # aggTrade ids are contiguous
    assert len(expected) > len(delivered)  # trades were generated while we were cut off
    stored: list[int] = []

    def complete() -> bool:
        stored[:] = stored_trade_ids(setup.api, limit=997)
        return len(stored) >= len(expected)

    wait_for(complete, 30, "the missed trades to be backfilled", setup.app, interval=0.5)
    assert stored == expected  # complete, each trade once, in order
    stream = setup.health().json()["streams"][0]
    assert stream["backfilled_trades"] == len(expected) - len(delivered)
    assert stream["missing_trades"] == stream["backfilled_trades"]
    gaps = httpx.get(setup.api + "/api/v1/gaps", params={"symbol": "BTCUSDT", "window": "1h"}, timeout=10).json()
    assert gaps["gaps"] == []
    page = httpx.get(setup.api + "/api/v1/trades/BTCUSDT", params={"window": "1h", "limit": 10}, timeout=10).json()
    assert page["data_complete"] is True


def test_a_restart_leaves_no_hole(setup: Setup) -> None:
    setup.more_trades()
    setup.stopped = True
    assert stop(setup.app) == 0, setup.app.output
    setup.more_trades(400)  # the market goes on while WADM is down (a deploy, a crash)
    port = free_port()
    with wadm("run", _env(setup.emu_port, setup.data), port) as app:
        api = f"http://127.0.0.1:{port}"
        wait_for(lambda: httpx.get(api + "/health", timeout=5).status_code == 200, 30, "the restart", app)
        setup.more_trades()
        setup.control("pause")
        delivered = setup.delivered()
        expected = list(range(delivered[0], delivered[-1] + 1))
        stored: list[int] = []

        def complete() -> bool:
            stored[:] = stored_trade_ids(api, limit=997)
            return len(stored) >= len(expected)

        wait_for(complete, 30, "the trades missed while down to be backfilled", app, interval=0.5)
        assert stored == expected  # the hour before, the outage and after: each trade once, in order
        gaps = httpx.get(api + "/api/v1/gaps", params={"symbol": "BTCUSDT", "window": "1h"}, timeout=10).json()
        assert gaps["gaps"] == []
        assert "Resuming 1 streams" in app.output


def test_silent_stream_turns_health_503_then_recovers(setup: Setup) -> None:
    # A silent socket (open, answering pings, no data): the watchdog replaces the connection and
    # collection goes on; the trades it withheld are recovered over REST.
    assert setup.control("silence", seconds=60)["affected"] == 1
    wait_for(lambda: setup.health().json()["connections"][0]["stale_reconnects"] >= 1, STALE_AFTER + 10,
             "the watchdog to replace the silent connection", setup.app)
    wait_for(lambda: setup.health().status_code == 200, 30, "/health to recover", setup.app)
    # A silent market (nothing arrives on any connection): /health says so for as long as it lasts.
    setup.control("pause")
    seen: list[dict[str, Any]] = []

    def reported() -> bool:
        r = setup.health()
        seen.append(r.json())
        return r.status_code == 503

    wait_for(reported, STALE_AFTER + 5, "/health to report the silence", setup.app, interval=0.1)
    body = seen[-1]
    assert body["status"] == "degraded" and body["store"]["ok"] is True, body
    # The silent stream is stale, or the watchdog is replacing its connection (in vain: still silent).
    assert body["streams"][0]["state"] in ("stale", "disconnected", "connecting"), body["streams"][0]
    setup.control("resume")
    wait_for(lambda: setup.health().status_code == 200, 30, "/health to recover", setup.app)
    gaps = httpx.get(setup.api + "/api/v1/gaps", params={"symbol": "BTCUSDT", "window": "1h"}, timeout=10).json()
    assert gaps["gaps"] == []  # the withheld trades came back over REST


def test_sigterm_flushes_and_exits_cleanly(setup: Setup) -> None:
    setup.more_trades()
    setup.control("pause")
    delivered = setup.delivered()
    wait_for(lambda: setup.received(delivered), 10, "every delivered trade to reach us", setup.app)
    setup.stopped = True
    code = stop(setup.app)
    assert code == 0, setup.app.output
    assert "Stopped;" in setup.app.output
    assert "Traceback" not in setup.app.output
    # Everything buffered at SIGTERM was written: serve the same store and read it back.
    port = free_port()
    with wadm("serve", _env(setup.emu_port, setup.data), port):
        stored = stored_trade_ids(f"http://127.0.0.1:{port}", limit=997)
    assert stored == delivered
