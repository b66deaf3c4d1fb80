"""The REST API over real HTTP: ``wadm serve`` under Granian reading a store we filled."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import polars as pl
import pytest

from tests.conftest import free_port
from tests.procs import wadm
from wadm.records import TRADE_SCHEMA_INT_ID, TRADES, BatchKey, Market, Venue
from wadm.store import SqliteStore, encode_batch

NOW_MS = int(time.time() * 1000) - 60_000


def _trades() -> pl.DataFrame:
    """600 trades over 30 milliseconds: 20 share each millisecond."""
    rows = []
    for i in range(600):
        ms = NOW_MS + i // 20
        side = 1 if i % 3 else -1
        rows.append((ms * 1_000_000, ms * 1_000_000 + 5, 1000 + i, 100.0 + i / 100, 0.001 * (i + 1), side))
    return pl.DataFrame(rows, schema=TRADE_SCHEMA_INT_ID, orient="row")


async def _fill(path: Path, frame: pl.DataFrame) -> None:
    store = SqliteStore(path)
    await store.open()
    key = BatchKey(TRADES, Venue.BINANCE, Market.SPOT, "BTCUSDT")
    # Batch boundaries fall inside a millisecond (every 45 rows), as flushes can.
    for start in range(0, frame.height, 45):
        await store.write(key, encode_batch(frame.slice(start, 45)))
    other = BatchKey(TRADES, Venue.BINANCE, Market.USDM, "BTCUSDT")
    await store.write(other, encode_batch(frame.head(3).with_columns(id=pl.col("id") + 10**9)))
    await store.close()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data = tmp_path_factory.mktemp("data")
    asyncio.run(_fill(data / "wadm.db", _trades()))
    port = free_port()
    env = {
        "WADM_DATA_DIR": str(data),
        "BINANCE_SYMBOLS": "BTCUSDT,ETHUSDT",
        "BINANCE_USDM_SYMBOLS": "BTCUSDT",
        "BYBIT_SYMBOLS": "",
        "BYBIT_SPOT_SYMBOLS": "",
    }
    with wadm("serve", env, port) as proc:
        yield f"http://127.0.0.1:{port}"
    assert "Traceback" not in proc.output, proc.output


def _get(api: str, path: str, **params: object) -> httpx.Response:
    return httpx.get(api + path, params=params, timeout=10)


def test_paging_returns_every_trade_once_in_order(api: str) -> None:
    expected = _trades()
    seen: list[dict[str, object]] = []
    params: dict[str, object] = {"exchange": "binance", "market": "spot", "limit": 7}
    pages = 0
    while True:
        r = _get(api, "/api/v1/trades/BTCUSDT", **params)
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["exchange"], body["market"], body["symbol"]) == ("binance", "spot", "BTCUSDT")
        assert body["count"] == len(body["trades"]) <= 7
        seen += body["trades"]
        pages += 1
        if body["next"] is None:
            break
        params["cursor"] = body["next"]
    assert pages == 600 // 7 + 1
    assert [t["id"] for t in seen] == expected["id"].to_list()
    first = seen[0]
    assert first == {"id": 1000, "ts": NOW_MS, "price": 100.0, "qty": 0.001, "side": "sell"}
    assert seen[1]["side"] == "buy"


def test_range_filters_accept_ms_and_iso(api: str) -> None:
    start, end = NOW_MS + 5, NOW_MS + 6
    r = _get(api, "/api/v1/trades/btcusdt", market="spot", start=start, end=end, limit=1000)
    assert r.status_code == 200
    assert [t["ts"] for t in r.json()["trades"]] == [NOW_MS + 5] * 20 + [NOW_MS + 6] * 20
    iso = datetime.fromtimestamp((NOW_MS + 5) / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "")
    r2 = _get(api, "/api/v1/trades/BTCUSDT", market="spot", start=iso, end=end)
    assert r2.json()["trades"] == r.json()["trades"]
    r3 = _get(api, "/api/v1/trades/BTCUSDT", market="usdm", window="1h")
    assert [t["id"] for t in r3.json()["trades"]] == [10**9 + 1000, 10**9 + 1001, 10**9 + 1002]
    empty = _get(api, "/api/v1/trades/ETHUSDT")  # collected on one market only, so no exchange/market needed
    assert empty.status_code == 200 and empty.json()["trades"] == [] and empty.json()["next"] is None


@pytest.mark.parametrize(
    ("path", "params", "status", "parameter", "fragment"),
    [
        ("/api/v1/trades/BTCUSDT", {}, 400, "exchange", "exchange=binance&market=spot"),
        ("/api/v1/trades/DOGEUSDT", {}, 404, None, "DOGEUSDT is not collected"),
        ("/api/v1/trades/BTCUSDT", {"market": "spot", "limit": "0"}, 400, "limit", "1 to 10000"),
        ("/api/v1/trades/BTCUSDT", {"market": "spot", "limit": "lots"}, 400, "limit", "1 to 10000"),
        ("/api/v1/trades/BTCUSDT", {"market": "spot", "start": "yesterday"}, 400, "start", "ISO-8601"),
        ("/api/v1/trades/BTCUSDT", {"market": "spot", "window": "9y"}, 400, "window", "got '9y'"),
        ("/api/v1/trades/BTCUSDT", {"market": "spot", "window": "1h", "start": "1"}, 400, "window", "not both"),
        ("/api/v1/trades/BTCUSDT", {"market": "spot", "start": "20", "end": "10"}, 400, "start", "after end"),
        ("/api/v1/trades/BTCUSDT", {"market": "spot", "cursor": "garbage"}, 400, "cursor", "unchanged"),
        ("/api/v1/trades/BTCUSDT", {"exchange": "kraken"}, 400, "exchange", "binance, bybit"),
        ("/api/v1/trades/BTCUSDT", {"market": "options"}, 400, "market", "spot, usdm, linear"),
        ("/api/v1/nothing", {}, 404, None, "no such path"),
    ],
)
def test_errors_are_json_and_name_the_problem(
    api: str, path: str, params: dict[str, str], status: int, parameter: str | None, fragment: str
) -> None:
    r = _get(api, path, **params)
    assert r.status_code == status
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert err["parameter"] == parameter
    assert fragment in err["message"]


def test_writes_are_refused_as_json(api: str) -> None:
    r = httpx.post(api + "/api/v1/trades/BTCUSDT", content=b"{}", timeout=10)
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def test_openapi_describes_the_served_paths(api: str) -> None:
    doc = _get(api, "/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    for path in ("/health", "/metrics", "/api/v1/symbols", "/api/v1/trades/{symbol}", "/api/v1/gaps"):
        assert path in doc["paths"]
        r = _get(api, path.replace("{symbol}", "BTCUSDT"), market="spot")
        assert r.status_code in (200, 503), path
    assert set(doc["components"]["schemas"]["Trade"]["required"]) == {"id", "ts", "price", "qty", "side"}


def test_symbols_and_metrics(api: str) -> None:
    symbols = _get(api, "/api/v1/symbols").json()["symbols"]
    assert {(s["exchange"], s["market"], s["symbol"]) for s in symbols} == {
        ("binance", "spot", "BTCUSDT"), ("binance", "spot", "ETHUSDT"), ("binance", "usdm", "BTCUSDT")
    }
    metrics = _get(api, "/metrics")
    assert metrics.status_code == 200 and "text/plain" in metrics.headers["content-type"]
    assert "wadm_writer_rows_total" in metrics.text


def test_health_without_collectors_reports_the_store(api: str) -> None:
    r = _get(api, "/health")
    body = r.json()
    assert r.status_code == 200, body
    assert body["collectors"]["enabled"] is False and body["store"]["ok"] is True and body["streams"] == []
