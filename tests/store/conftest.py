"""Fixtures for the store contract suite: every contract test runs against every store.

MongoDB tests talk to a real wire-protocol server. By default the session starts ``nx-27017``
(a MongoDB wire server over SQLite, a dev dependency) on a free loopback port with its data,
log and pid files under the session's temporary folder. Set ``WADM_TEST_MONGODB_URI`` to use a
real MongoDB instead; each test then gets its own database, dropped afterwards.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import sqlite3
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from bson import Binary
from pymongo import AsyncMongoClient, MongoClient

from tests.mongo import MONGODB_URI_ENV, accepts_connections, nx_27017_command
from wadm.records import BatchKey
from wadm.store.base import Store
from wadm.store.mongo import MongoStore
from wadm.store.sqlite import SqliteStore

STARTUP_TIMEOUT = 30.0  # seconds for nx-27017 to accept connections

RawInsert = Callable[[BatchKey, int, int, int, bytes], Awaitable[None]]

_RUN_ID = uuid.uuid4().hex[:8]
_DATABASES = itertools.count()


def free_port() -> int:
    """A loopback TCP port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_nx_27017(folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Start nx-27017 on a free port and wait until it accepts connections."""
    command = nx_27017_command()
    for attempt in range(3):  # another process may take the free port before the server binds it
        port = free_port()
        run = folder / f"run{attempt}"
        run.mkdir()
        log_file, output_file = run / "nx-27017.log", run / "nx-27017.out"
        with output_file.open("wb") as output:  # the child keeps its own handle
            proc = subprocess.Popen(
                [
                    command,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--data-dir",
                    str(run / "data"),
                    "--pid-file",
                    str(run / "nx-27017.pid"),
                    "--log-file",
                    str(log_file),
                ],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=run,
            )
        listening = f"Listening on 127.0.0.1:{port}"
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while proc.poll() is None and time.monotonic() < deadline:
            # The log line proves that this process (not another one) bound the port.
            if log_file.exists() and listening in log_file.read_text(errors="replace"):
                if accepts_connections(port):
                    return proc, port
            time.sleep(0.05)
        _stop(proc)
    log = log_file.read_text(errors="replace")[-2000:] if log_file.exists() else "(no log)"
    output_text = output_file.read_text(errors="replace")[-2000:]
    pytest.fail(f"nx-27017 did not start; last log lines:\n{log}\noutput:\n{output_text}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def mongodb_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URI of the MongoDB server for this session: ``WADM_TEST_MONGODB_URI`` or a fresh nx-27017."""
    uri = os.environ.get(MONGODB_URI_ENV)
    if uri:
        yield uri
        return
    proc, port = _start_nx_27017(tmp_path_factory.mktemp("nx-27017"))
    try:
        yield f"mongodb://127.0.0.1:{port}/"
    finally:
        _stop(proc)


@pytest.fixture
def mongodb_database(mongodb_uri: str) -> Iterator[str]:
    """A database name unique to this test (and test run), dropped after the test."""
    name = f"wadm_test_{_RUN_ID}_{next(_DATABASES)}"
    yield name
    client: MongoClient[dict[str, object]]
    with MongoClient(mongodb_uri, serverSelectionTimeoutMS=5000) as client:
        client.drop_database(name)


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
