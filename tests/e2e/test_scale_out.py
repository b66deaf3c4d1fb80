"""Scale-out: ``wadm collect`` (collectors, /health and /metrics only) and ``wadm serve --workers 2``
(the API only) as separate processes over one MongoDB (an nx-27017 wire server)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.e2e.test_spool import Mongo
from tests.procs import emulator, stored_trade_ids, wadm, wait_for

pytestmark = pytest.mark.e2e


def test_collect_and_serve_share_the_store(tmp_path: Path) -> None:
    mongo = Mongo(tmp_path)
    mongo.start()
    try:
        with emulator("--symbols", "BTCUSDT", "--markets", "spot", "--rate", "200", "--seed", "5") as (_, emu_port):
            env = {
                "BINANCE_SYMBOLS": "BTCUSDT", "BINANCE_USDM_SYMBOLS": "", "BYBIT_SYMBOLS": "",
                "BYBIT_SPOT_SYMBOLS": "", "WADM_CHANNELS": "trades", "COLLECTORS_START_DELAY": "0",
                "WADM_BINANCE_SPOT_WS_URL": f"ws://127.0.0.1:{emu_port}/binance/spot",
                "WADM_BINANCE_SPOT_REST_URL": f"http://127.0.0.1:{emu_port}/binance/spot",
                "WADM_FLUSH_INTERVAL": "0.2", "MONGODB_URI": mongo.uri, "WADM_DATA_DIR": str(tmp_path / "c"),
            }
            collect_port, serve_port = free_port(), free_port()
            collector, api = f"http://127.0.0.1:{collect_port}", f"http://127.0.0.1:{serve_port}"
            with wadm("collect", env, collect_port) as c, \
                    wadm("serve --workers 2", env | {"WADM_DATA_DIR": str(tmp_path / "s")}, serve_port) as s:
                wait_for(lambda: httpx.get(collector + "/health", timeout=5).status_code == 200, 60,
                         "the collector to be healthy", c)
                assert httpx.get(collector + "/metrics", timeout=5).status_code == 200
                no_api = httpx.get(collector + "/api/v1/trades/BTCUSDT", timeout=5)
                assert no_api.status_code == 404 and no_api.json()["error"]
                wait_for(lambda: httpx.get(api + "/health", timeout=5).status_code == 200, 60, "the API", s)
                httpx.get(f"http://127.0.0.1:{emu_port}/control/pause", timeout=5)
                delivered = httpx.get(f"http://127.0.0.1:{emu_port}/control/delivered",
                                      params={"stream": "btcusdt@aggTrade", "market": "spot"}, timeout=5).json()["ids"]
                ids: list[int] = []

                def served_all() -> bool:
                    ids[:] = stored_trade_ids(api, limit=997)
                    return len(ids) >= len(delivered)

                wait_for(served_all, 30, "the API to serve every collected trade", s, interval=0.5)
                assert ids == delivered
                # Both API workers answer from the same store: several requests agree.
                answers = [httpx.get(api + "/api/v1/trades/BTCUSDT", params={"limit": 5}, timeout=5).json()["trades"]
                           for _ in range(8)]
                assert all(a == answers[0] for a in answers) and len(answers[0]) == 5
                assert "Traceback" not in c.output + s.output
    finally:
        mongo.kill()
