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
from wadm.records import (
    BOOK_SNAPSHOTS,
    KLINE_SCHEMA,
    KLINES,
    TRADE_SCHEMA_INT_ID,
    TRADES,
    BatchKey,
    Market,
    Venue,
    book_snapshot_schema,
)
from wadm.store import SqliteStore, encode_batch

NOW_MS = int(time.time() * 1000) - 60_000
KLINE_BASE = ((NOW_MS // 60_000) - 20) // 5 * 5 * 60_000  # ten closed 1m bars from a 5m boundary


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
    await store.write(BatchKey(KLINES, Venue.BINANCE, Market.SPOT, "BTCUSDT"), encode_batch(_klines()))
    snapshots = _snapshots()
    for first in range(0, snapshots.height, 2):  # tiny batches, as a 1 s cut of 1 s snapshots makes
        await store.write(BatchKey(BOOK_SNAPSHOTS, Venue.BINANCE, Market.SPOT, "BTCUSDT"),
                          encode_batch(snapshots.slice(first, 2)))
    await store.close()


def _klines() -> pl.DataFrame:
    rows = [((KLINE_BASE + i * 60_000) * 1_000_000, 0, 100.0 + i, 101.5 + i, 99.0 + i, 100.5 + i, i + 1.0,
             (i + 1) * 100.0, 10 * i, 0.5 * (i + 1), 50.0 * (i + 1)) for i in range(10)]
    return pl.DataFrame(rows, schema=KLINE_SCHEMA, orient="row")


def _snapshots() -> pl.DataFrame:
    rows = []
    for k in range(10):
        ts = (NOW_MS - 10_000 + k * 1000) * 1_000_000
        bids = [round(100.0 - k - j * 0.01, 2) for j in range(10)]
        asks = [round(100.01 - k + j * 0.01, 2) for j in range(10)]
        rows.append((ts, ts - 5, ts - 1, 1000 + k, 100.005 - k, 0.01, *([1.0, 2.0, -1 / 3] * 3),
                     bids, [1.0] * 10, asks, [2.0] * 10))
    return pl.DataFrame(rows, schema=book_snapshot_schema(), orient="row")


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
        ("/api/v1/trades/BTCUSDT", {"market": "spot", "start": "1767225600020", "end": "1767225600010"}, 400, "start",
         "after end"),
        ("/api/v1/trades/BTCUSDT", {"market": "spot", "cursor": "garbage"}, 400, "cursor", "unchanged"),
        ("/api/v1/trades/BTCUSDT", {"exchange": "kraken"}, 400, "exchange", "binance, bybit"),
        ("/api/v1/trades/BTCUSDT", {"market": "options"}, 400, "market", "spot, usdm, linear"),
        ("/api/v1/nothing", {}, 404, None, "no such path"),
        ("/api/v1/klines/BTCUSDT", {"market": "spot", "interval": "2m"}, 400, "interval", "1m, 5m, 15m, 1h, 4h"),
        ("/api/v1/klines/BTCUSDT", {}, 400, "exchange", "exchange=binance&market=spot"),
        ("/api/v1/orderbook/BTCUSDT", {"market": "spot", "depth": "0"}, 400, "depth", "1 to 1000"),
        ("/api/v1/orderbook/BTCUSDT", {"market": "spot"}, 503, None, "/api/v1/orderbook/BTCUSDT/history"),
        ("/api/v1/orderbook/DOGEUSDT/history", {}, 404, None, "DOGEUSDT is not collected"),
        ("/api/v1/orderbook/BTCUSDT/history", {"market": "spot", "limit": "9999"}, 400, "limit", "1 to 3600"),
        ("/api/v1/gaps", {"channel": "news"}, 400, "channel", "trades, book, klines"),
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


def test_klines_come_at_every_interval(api: str) -> None:
    start = KLINE_BASE
    r = _get(api, "/api/v1/klines/BTCUSDT", market="spot", interval="1m", start=start, limit=1500)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["exchange"], body["market"], body["interval"]) == ("binance", "spot", "1m")
    bars = body["klines"]
    assert [b["ts"] for b in bars] == [KLINE_BASE + i * 60_000 for i in range(10)]
    assert bars[3] == {"ts": KLINE_BASE + 180_000, "open": 103.0, "high": 104.5, "low": 102.0, "close": 103.5,
                       "volume": 4.0, "quote_volume": 400.0, "trades": 30, "taker_buy_volume": 2.0,
                       "taker_buy_quote": 200.0, "closed": True, "minutes": 1, "complete": True}
    five = _get(api, "/api/v1/klines/BTCUSDT", market="spot", interval="5m", start=start).json()["klines"]
    assert [b["ts"] for b in five] == [KLINE_BASE, KLINE_BASE + 300_000]
    assert five[0] | {"quote_volume": 0} == {"ts": KLINE_BASE, "open": 100.0, "high": 105.5, "low": 99.0,
                                             "close": 104.5, "volume": 15.0, "quote_volume": 0, "trades": 100,
                                             "taker_buy_volume": 7.5, "taker_buy_quote": 750.0, "closed": True,
                                             "minutes": 5, "complete": True}
    hourly = _get(api, "/api/v1/klines/BTCUSDT", market="spot", interval="1h", start=start).json()
    one_hour = hourly["klines"]
    assert sum(b["minutes"] for b in one_hour) == 10 and sum(b["volume"] for b in one_hour) == 55.0
    # Ten minutes of an hour (this API-only process collects nothing newer): the hourly bars are
    # not complete, and the answer says so.
    assert not any(b["complete"] for b in one_hour) and hourly["data_complete"] is False
    assert hourly["partial_bars"] == [b["ts"] for b in one_hour]
    # Without start: the newest bars up to end.
    newest = _get(api, "/api/v1/klines/BTCUSDT", market="spot", limit=3).json()
    assert [b["ts"] for b in newest["klines"]] == [KLINE_BASE + i * 60_000 for i in (7, 8, 9)]
    assert newest["truncated"] is True
    in_window = _get(api, "/api/v1/klines/BTCUSDT", market="spot", window="1h", limit=2).json()
    assert [b["ts"] for b in in_window["klines"]] == [KLINE_BASE + i * 60_000 for i in (8, 9)]


def test_book_history_pages_through_stored_snapshots(api: str) -> None:
    seen = []
    params: dict[str, object] = {"market": "spot", "window": "1h", "limit": 3, "depth": 3}
    while True:
        r = _get(api, "/api/v1/orderbook/BTCUSDT/history", **params)
        assert r.status_code == 200, r.text
        body = r.json()
        seen += body["snapshots"]
        if body["next"] is None:
            break
        params["cursor"] = body["next"]
    assert [x["ts"] for x in seen] == [NOW_MS - 10_000 + k * 1000 for k in range(10)]
    first = seen[0]
    assert first["bids"] == [[100.0, 1.0], [99.99, 1.0], [99.98, 1.0]]
    assert first["asks"] == [[100.01, 2.0], [100.02, 2.0], [100.03, 2.0]]
    assert first["mid"] == 100.005 and first["update_id"] == 1000
    assert first["bands"]["imbalance_0.1pct"] == -1 / 3
