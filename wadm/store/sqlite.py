"""The embedded store: SQLite in WAL mode, the default when no MongoDB URI is configured.

Same batch layout as MongoDB: one row per batch with its index fields and encoded columns.
Writes run on one dedicated thread (one writer connection); reads run on their own threads
and connections, which WAL lets proceed while a write is in progress. The event loop never
waits on SQLite.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import polars as pl

from wadm.errors import StoreError
from wadm.records import BatchKey
from wadm.store.base import BatchMeta, select_batches
from wadm.store.codec import Batch, DecodedBatches, decode_frame

__all__ = ["SqliteStore"]

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY,
    uid BLOB NOT NULL UNIQUE,
    tbl TEXT NOT NULL,
    venue TEXT NOT NULL,
    market TEXT NOT NULL,
    symbol TEXT NOT NULL,
    start INTEGER NOT NULL,
    "end" INTEGER NOT NULL,
    count INTEGER NOT NULL,
    first_id,
    last_id,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS batches_key ON batches (tbl, venue, market, symbol, start);
CREATE INDEX IF NOT EXISTS batches_end ON batches (tbl, "end");
"""


class SqliteStore:
    """Batches in one SQLite file.

    Args:
        path: the database file; its folder is created if missing.
        read_threads: threads (each with its own connection) serving reads.
    """

    name = "sqlite"

    def __init__(self, path: Path, *, read_threads: int = 2) -> None:
        self.path = path
        self.read_threads = read_threads
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._decoded = DecodedBatches()
        self._start_threads()

    def _start_threads(self) -> None:
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wadm-sqlite-w")
        self._readers = ThreadPoolExecutor(max_workers=self.read_threads, thread_name_prefix="wadm-sqlite-r")
        self._closed = False

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    async def _run(self, pool: ThreadPoolExecutor, fn: Callable[[], T]) -> T:
        if self._closed:
            raise StoreError(f"sqlite store {self.path} is closed")
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, fn)
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite store {self.path}: {exc}") from exc

    async def open(self) -> None:
        """Create the file, its folder, the table and indexes (again after :meth:`close`)."""
        if self._closed:
            self._local = threading.local()
            self._start_threads()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the data folder {self.path.parent}: {exc}") from exc
        await self._run(self._writer, lambda: self._conn().executescript(_SCHEMA))

    async def close(self) -> None:
        """Finish queued work and close every connection."""
        self._closed = True
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._writer.shutdown, True)
        await loop.run_in_executor(None, self._readers.shutdown, True)
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()

    async def write(self, key: BatchKey, batch: Batch) -> None:
        """Insert one batch."""
        await self.write_many([(key, batch)])

    async def write_many(self, items: Sequence[tuple[BatchKey, Batch]]) -> None:
        """Insert batches in one transaction; a batch whose ``uid`` is stored already is skipped."""
        rows = [
            (batch.uid, key.table, key.venue.value, key.market.value, key.symbol, batch.start, batch.end,
             batch.count, batch.first_id, batch.last_id, batch.data)
            for key, batch in items
        ]

        def insert() -> None:
            conn = self._conn()
            with conn:  # one transaction: all or nothing
                conn.execute("BEGIN")
                conn.executemany(
                    'INSERT OR IGNORE INTO batches (uid, tbl, venue, market, symbol, start, "end", count, first_id,'
                    " last_id, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )

        await self._run(self._writer, insert)

    async def read(self, key: BatchKey, start: int, end: int, *, max_rows: int | None = None) -> pl.DataFrame:
        """Rows of the batches of ``key`` overlapping ``[start, end]``; see :class:`~wadm.store.base.Store`."""

        def fetch() -> pl.DataFrame:
            conn = self._conn()
            rows = conn.execute(
                'SELECT id, start, "end", count, uid FROM batches WHERE tbl = ? AND venue = ? AND market = ?'
                ' AND symbol = ? AND start <= ? AND "end" >= ? ORDER BY start',
                (key.table, key.venue.value, key.market.value, key.symbol, end, start),
            ).fetchall()
            chosen = select_batches([BatchMeta(r[0], r[1], r[2], r[3]) for r in rows], max_rows)
            # Decoded batches are kept by uid: SQLite gives a deleted row's id to the next insert.
            uids = {r[0]: bytes(r[4]) for r in rows}
            found = {m.handle: self._decoded.get(uids[m.handle]) for m in chosen}
            missing = [h for h, f in found.items() if f is None]
            for i in range(0, len(missing), 500):  # SQLite limits bound parameters per statement
                ids = missing[i : i + 500]
                marks = ",".join("?" * len(ids))
                for handle, uid, data in conn.execute(f"SELECT id, uid, data FROM batches WHERE id IN ({marks})",
                                                      ids):
                    if bytes(uid) != uids[handle]:
                        continue  # swept in between, and its id taken by a new batch: absent
                    found[handle] = frame = decode_frame(data)
                    self._decoded.put(uids[handle], frame)
            # In start order; batches swept in between are simply absent.
            frames = [f for f in found.values() if f is not None]
            return pl.concat(frames, how="vertical_relaxed") if frames else pl.DataFrame()

        # Decoding happens on the reader thread too: polars releases the GIL while it works.
        return await self._run(self._readers, fetch)

    async def latest(self, key: BatchKey, *, before: int | None = None) -> pl.DataFrame:
        """Rows of the batch of ``key`` that ends last (before ``before``); see :class:`~wadm.store.base.Store`."""
        bound = 2**63 - 1 if before is None else before

        def fetch() -> pl.DataFrame:
            row = self._conn().execute(
                'SELECT data FROM batches WHERE tbl = ? AND venue = ? AND market = ? AND symbol = ? AND "end" < ?'
                ' ORDER BY "end" DESC, start DESC LIMIT 1',
                (key.table, key.venue.value, key.market.value, key.symbol, bound),
            ).fetchone()
            return decode_frame(row[0]) if row else pl.DataFrame()

        return await self._run(self._readers, fetch)

    async def sweep(self, table: str, older_than: int) -> int:
        """Delete batches of ``table`` that ended before ``older_than`` (event time, ns)."""

        def delete() -> int:
            cur = self._conn().execute('DELETE FROM batches WHERE tbl = ? AND "end" < ?', (table, older_than))
            return cur.rowcount

        return await self._run(self._writer, delete)

    async def healthcheck(self) -> bool:
        """True when a trivial query answers."""
        if self._closed:
            return False
        try:
            await self._run(self._readers, lambda: self._conn().execute("SELECT 1").fetchone())
        except StoreError:
            return False
        return True
