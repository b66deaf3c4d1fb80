"""Fixtures for the store contract suite: every contract test runs against every store.

MongoDB tests talk to a real wire-protocol server (``tests/mongo.py``: nx-27017, or a real
MongoDB named by ``WADM_TEST_MONGODB_URI``); each test gets its own database, dropped afterwards.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import pytest_asyncio
from bson import Binary
from pymongo import AsyncMongoClient

from tests.conftest import free_port
from wadm.records import BatchKey
from wadm.store.base import Store
from wadm.store.mongo import MongoStore
from wadm.store.sqlite import SqliteStore

__all__ = ["RawInsert", "free_port"]

RawInsert = Callable[[BatchKey, int, int, int, bytes], Awaitable[None]]


@pytest_asyncio.fixture(params=["sqlite", "mongodb"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """An opened store of each kind, empty; closed after the test."""
    impl: SqliteStore | MongoStore
    if request.param == "sqlite":
        impl = SqliteStore(tmp_path / "wadm.db")
    else:
        uri = request.getfixturevalue("mongodb_uri")
        impl = MongoStore(uri, database=request.getfixturevalue("mongodb_database"))
    await impl.open()
    try:
        yield impl
    finally:
        await impl.close()


@pytest_asyncio.fixture
async def insert_raw(store: Store) -> RawInsert:
    """Insert a stored batch directly, bypassing the codec: ``await insert_raw(key, start, end, count, data)``."""
    if isinstance(store, SqliteStore):
        path = store.path

        def insert_sqlite(key: BatchKey, start: int, end: int, count: int, data: bytes) -> None:
            with sqlite3.connect(path) as conn:
                conn.execute(
                    'INSERT INTO batches (uid, tbl, venue, market, symbol, start, "end", count, data)'
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (os.urandom(12), key.table, key.venue.value, key.market.value, key.symbol, start, end, count,
                     data),
                )
            conn.close()

        async def insert_into_sqlite(key: BatchKey, start: int, end: int, count: int, data: bytes) -> None:
            await asyncio.to_thread(insert_sqlite, key, start, end, count, data)

        return insert_into_sqlite

    assert isinstance(store, MongoStore)
    mongo = store

    async def insert_into_mongo(key: BatchKey, start: int, end: int, count: int, data: bytes) -> None:
        client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(mongo.uri, serverSelectionTimeoutMS=5000)
        try:
            await client[mongo.database][key.table].insert_one(
                {
                    "venue": key.venue.value,
                    "market": key.market.value,
                    "symbol": key.symbol,
                    "start": start,
                    "end": end,
                    "count": count,
                    "data": Binary(data),
                }
            )
        finally:
            await client.close()

    return insert_into_mongo
