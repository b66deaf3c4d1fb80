"""MongoDB specifics: document layout, indexes and retention, errors (see the contract for the rest)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from wadm.errors import StoreError
from wadm.store import make_store
from wadm.store.mongo import _DECODE_INLINE_BYTES, MongoStore, _redact

from .conftest import free_port
from .helpers import BINANCE_SPOT, BYBIT_LINEAR, T0, batch

pytestmark = pytest.mark.asyncio

KEY_INDEX = {"venue": 1, "market": 1, "symbol": 1, "start": 1}


@asynccontextmanager
async def opened(uri: str, database: str, **kwargs: Any) -> AsyncIterator[MongoStore]:
    store = MongoStore(uri, database=database, **kwargs)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@asynccontextmanager
async def raw_db(uri: str, database: str) -> AsyncIterator[Any]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, tz_aware=True)
    try:
        yield client[database]
    finally:
        await client.close()


async def indexes(uri: str, database: str, table: str) -> dict[tuple[tuple[str, int], ...], dict[str, Any]]:
    async with raw_db(uri, database) as db:
        found = await (await db[table].list_indexes()).to_list()
    return {tuple((k, int(v)) for k, v in ix["key"].items()): dict(ix) for ix in found}


async def test_a_batch_is_one_document_with_native_id_types(mongodb_uri: str, mongodb_database: str) -> None:
    async with opened(mongodb_uri, mongodb_database) as store:
        _, binance = batch(BINANCE_SPOT, T0 + 123_456_789, 3, first_id=9_000_000_000)
        _, bybit = batch(BYBIT_LINEAR, T0, 2)
        await store.write(BINANCE_SPOT, binance)
        await store.write(BYBIT_LINEAR, bybit)

    async with raw_db(mongodb_uri, mongodb_database) as db:
        docs = {d["venue"]: d for d in await db["trades"].find({}).to_list()}
    doc = docs["binance"]
    fields = {"_id", "venue", "market", "symbol", "start", "end", "count", "first_id", "last_id", "data", "end_at"}
    assert set(doc) == fields
    assert (doc["market"], doc["symbol"], doc["count"]) == ("spot", "BTCUSDT", 3)
    assert (doc["start"], doc["end"]) == (binance.start, binance.end)
    assert (doc["first_id"], doc["last_id"]) == (9_000_000_000, 9_000_000_002)
    assert doc["data"] == binance.data
    assert doc["end_at"] == datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=binance.end // 1_000_000)
    assert isinstance(docs["bybit"]["first_id"], str)
    assert docs["bybit"]["first_id"] == bybit.first_id


async def test_open_creates_read_and_ttl_indexes_for_retained_tables(mongodb_uri: str, mongodb_database: str) -> None:
    async with opened(mongodb_uri, mongodb_database, retention={"trades": 3600, "bars_1m": 86400}):
        pass

    for table, seconds in (("trades", 3600), ("bars_1m", 86400)):
        found = await indexes(mongodb_uri, mongodb_database, table)
        assert tuple(KEY_INDEX.items()) in found
        assert found[(("end_at", 1),)]["expireAfterSeconds"] == seconds


async def test_a_changed_retention_updates_the_ttl_index(mongodb_uri: str, mongodb_database: str) -> None:
    async with opened(mongodb_uri, mongodb_database, retention={"trades": 3600}):
        pass
    async with opened(mongodb_uri, mongodb_database, retention={"trades": 7200}) as store:
        assert await store.healthcheck()

    found = await indexes(mongodb_uri, mongodb_database, "trades")
    assert found[(("end_at", 1),)]["expireAfterSeconds"] == 7200


async def test_tables_without_retention_get_the_read_index_on_first_write(
    mongodb_uri: str, mongodb_database: str
) -> None:
    key = replace(BINANCE_SPOT, table="gaps")
    async with opened(mongodb_uri, mongodb_database, retention={"trades": 3600}) as store:
        await store.write(key, batch(key, T0)[1])
        await store.write(key, batch(key, T0 + 1)[1])

    found = await indexes(mongodb_uri, mongodb_database, "gaps")
    assert tuple(KEY_INDEX.items()) in found
    assert (("end_at", 1),) not in found


async def _fail_against_a_closed_port(uri: str) -> list[StoreError]:
    """Run every operation against a server that is not there; return the errors raised."""
    store = MongoStore(uri, database="x", server_selection_timeout=0.2)
    errors: list[StoreError] = []
    try:
        async with asyncio.timeout(30):  # a guard against hanging, not a measurement
            for operation in (
                store.open,
                lambda: store.write(BINANCE_SPOT, batch(BINANCE_SPOT, T0)[1]),
                lambda: store.read(BINANCE_SPOT, 0, T0),
                lambda: store.sweep("trades", T0),
            ):
                with pytest.raises(StoreError) as raised:
                    await operation()
                errors.append(raised.value)
            assert await store.healthcheck() is False
    finally:
        await store.close()
    return errors


# NOTE: PyMongo 4.20 leaks the socket of a server-monitor connect that close() cancels (its
# connect helper closes the socket on OSError/TimeoutError, not on CancelledError). Everything
# that references the client is dropped and collected inside this test, so the leak is reported
# (and ignored) here rather than as an unraisable warning at the end of the session.
@pytest.mark.filterwarnings("ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning")
async def test_an_unreachable_server_raises_store_error_naming_the_host() -> None:
    port = free_port()  # nothing listens there
    errors = await _fail_against_a_closed_port(f"mongodb://wadm:s3cr%40t@127.0.0.1:{port}/")
    messages = [(str(error), error.__cause__ is not None) for error in errors]
    del errors
    gc.collect()

    assert len(messages) == 4
    for message, chained in messages:
        assert f"127.0.0.1:{port}" in message
        assert "s3cr" not in message
        assert chained


async def test_use_before_open_is_a_store_error_the_caller_can_retry() -> None:
    # Not open yet (the server did not answer at start): writers retry, readers answer 503.
    store = MongoStore("mongodb://127.0.0.1:1/")
    with pytest.raises(StoreError, match="not open"):
        await store.write(BINANCE_SPOT, batch(BINANCE_SPOT, T0)[1])
    with pytest.raises(StoreError, match="not open"):
        await store.read(BINANCE_SPOT, 0, 2**62)
    assert await store.healthcheck() is False
    await store.close()


async def test_a_document_without_data_raises_store_error(mongodb_uri: str, mongodb_database: str) -> None:
    async with opened(mongodb_uri, mongodb_database) as store:
        async with raw_db(mongodb_uri, mongodb_database) as db:
            await db["trades"].insert_one(
                {"venue": "binance", "market": "spot", "symbol": "BTCUSDT", "start": T0, "end": T0, "count": 1}
            )
        with pytest.raises(StoreError, match="no data"):
            await store.read(BINANCE_SPOT, 0, T0)


async def test_a_large_read_is_decoded_on_a_worker_thread(mongodb_uri: str, mongodb_database: str) -> None:
    async with opened(mongodb_uri, mongodb_database) as store:
        frame, encoded = batch(BINANCE_SPOT, T0, 50_000, step=1000)
        assert len(encoded.data) > _DECODE_INLINE_BYTES  # takes the asyncio.to_thread path
        await store.write(BINANCE_SPOT, encoded)
        got = await store.read(BINANCE_SPOT, 0, T0 + 10**12)
    assert got.equals(frame)


@pytest.mark.parametrize(
    ("uri", "host", "secret"),
    [
        ("mongodb://127.0.0.1:27017", "127.0.0.1:27017", None),
        ("mongodb://u:p%40ss@h1:1,h2:2/db?authSource=admin", "h1:1,h2:2", "p%40ss"),
        ("mongodb+srv://user:pw@cluster0.example.net/?retryWrites=true", "cluster0.example.net", "pw"),
        ("mongodb://user@h", "h", None),
    ],
)
async def test_the_host_is_named_without_credentials(uri: str, host: str, secret: str | None) -> None:
    assert _redact(uri) == (host, secret)
    assert repr(MongoStore(uri)) == f"MongoStore(host={host!r}, database='wadm')"


@pytest.mark.parametrize(
    ("uri", "database"),
    [
        ("mongodb://127.0.0.1:27017", "wadm"),
        ("mongodb://127.0.0.1:27017/", "wadm"),
        ("mongodb://127.0.0.1:27017/?replicaSet=rs0", "wadm"),
        ("mongodb://u:p%40ss@h1:1,h2:2/market_data?authSource=admin", "market_data"),
        ("mongodb+srv://user:pw@cluster0.example.net/my%2Ddb?retryWrites=true", "my-db"),
    ],
)
async def test_the_service_stores_into_the_database_the_uri_names(uri: str, database: str, tmp_path: Path) -> None:
    store = make_store(uri, tmp_path, {})
    assert isinstance(store, MongoStore) and store.database == database
