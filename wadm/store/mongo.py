"""The production store: MongoDB through PyMongo's ``AsyncMongoClient``.

One collection per table (``trades``, ``bars_1m``...) and one document per batch::

    {venue, market, symbol,       # the series (strings)
     start, end,                  # first/last ts_event, int64 ns
     count, first_id, last_id,    # ids keep their native type (int or str)
     data,                        # BSON binary: the batch encoded by wadm.store.codec
     end_at}                      # UTC datetime of ``end``, for the TTL index

Indexes: ``(venue, market, symbol, start)`` for reads, and a TTL index on ``end_at`` whose
``expireAfterSeconds`` is the table's retention. Tables named in ``retention`` get their indexes
in :meth:`MongoStore.open`; any other table gets the read index on its first write. The TTL
monitor deletes expired batches in the background (about once a minute); :meth:`MongoStore.sweep`
deletes them exactly, and also works on servers without a TTL monitor.

Reads fetch the index fields first, choose batches with :func:`~wadm.store.base.select_batches`,
then fetch only the chosen blobs. Every driver error is raised as :class:`~wadm.errors.StoreError`
naming the host, never the credentials.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote

import polars as pl
from bson import Binary, ObjectId
from bson.errors import BSONError
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, OperationFailure, PyMongoError

from wadm.errors import StoreError
from wadm.records import BatchKey
from wadm.store.base import BatchMeta, select_batches
from wadm.store.codec import Batch, DecodedBatches, decode_frame
from wadm.units import NS_PER_MS

__all__ = ["MongoStore"]

logger = logging.getLogger(__name__)

Document = dict[str, Any]

KEY_INDEX = [("venue", ASCENDING), ("market", ASCENDING), ("symbol", ASCENDING), ("start", ASCENDING)]
TTL_FIELD = "end_at"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Driver errors we wrap. OverflowError: bson cannot encode an int beyond 64 bits.
_DRIVER_ERRORS = (PyMongoError, BSONError, OverflowError)
# createIndexes refuses an index that exists with other options (or another name).
_INDEX_CONFLICT_CODES = frozenset({85, 86})  # IndexOptionsConflict, IndexKeySpecsConflict
# PERF: above this many encoded bytes, decoding moves off the event loop.
_DECODE_INLINE_BYTES = 256 * 1024


_DUPLICATE_KEY = 11000


def _document(key: BatchKey, batch: Batch) -> Document:
    return {
        "_id": ObjectId(batch.uid),
        "venue": key.venue.value,
        "market": key.market.value,
        "symbol": key.symbol,
        "start": batch.start,
        "end": batch.end,
        "count": batch.count,
        "first_id": batch.first_id,
        "last_id": batch.last_id,
        "data": Binary(batch.data),
        TTL_FIELD: _EPOCH + timedelta(microseconds=batch.end // 1000),  # BSON keeps ms
    }


class MongoStore:
    """Batches in MongoDB, one collection per table.

    Args:
        uri: a ``mongodb://`` or ``mongodb+srv://`` connection string.
        database: the database holding the table collections.
        retention: seconds to keep each table's batches (event time); a TTL index on ``end_at``
            is created (or updated) for each table named here when the store opens.
        server_selection_timeout: seconds an operation waits for a reachable server before
            failing with :class:`~wadm.errors.StoreError`.
    """

    name = "mongodb"

    def __init__(
        self,
        uri: str,
        *,
        database: str = "wadm",
        retention: Mapping[str, int] | None = None,
        server_selection_timeout: float = 5.0,
    ) -> None:
        self.uri = uri
        self.database = database
        self.retention: dict[str, int] = dict(retention or {})
        self.server_selection_timeout = server_selection_timeout
        self.host, password = _redact(uri)
        # The driver may echo the password as written or percent-decoded; hide both.
        self._secrets = {password, unquote(password)} - {""} if password else set()
        self._client: AsyncMongoClient[Document] | None = None
        self._indexed: set[str] = set()
        self._decoded = DecodedBatches()

    def __repr__(self) -> str:
        return f"MongoStore(host={self.host!r}, database={self.database!r})"

    def _error(self, action: str, exc: BaseException) -> StoreError:
        detail = str(exc)
        for secret in self._secrets:
            detail = detail.replace(secret, "***")
        return StoreError(f"mongodb store {self.host}/{self.database}: {action} failed: {detail}")

    def _collection(self, table: str) -> AsyncCollection[Document]:
        if self._client is None:
            raise StoreError(f"mongodb store {self.host}/{self.database} is not open")
        return self._client[self.database][table]

    async def open(self) -> None:
        """Connect, check that the server answers, and index every table named in ``retention``.

        Raises:
            StoreError: the server cannot be reached or refused an index. The store stays usable
                (the caller may keep writing and retrying): the client reconnects by itself, and
                indexes that could not be created are retried on the table's next write.
        """
        if self._client is None:
            try:
                self._client = AsyncMongoClient(
                    self.uri,
                    tz_aware=True,
                    appname="wadm",
                    serverSelectionTimeoutMS=max(1, round(self.server_selection_timeout * 1000)),
                    connectTimeoutMS=10_000,
                    socketTimeoutMS=60_000,  # a server that accepts and never answers fails the write
                )
            except _DRIVER_ERRORS as exc:
                raise self._error("connecting", exc) from exc
        try:
            await self._client.admin.command("ping")
        except _DRIVER_ERRORS as exc:
            raise self._error("connecting", exc) from exc
        for table in self.retention:
            await self._ensure_indexes(table)

    async def _ensure_indexes(self, table: str) -> None:
        """Create the read index and, if the table has a retention, the TTL index."""
        if table in self._indexed:
            return
        coll = self._collection(table)
        try:
            await coll.create_index(KEY_INDEX)
            if table in self.retention:
                await self._ensure_ttl(coll, self.retention[table])
        except _DRIVER_ERRORS as exc:
            raise self._error(f"creating the indexes of {table!r}", exc) from exc
        self._indexed.add(table)

    async def _ensure_ttl(self, coll: AsyncCollection[Document], seconds: int) -> None:
        try:
            await coll.create_index([(TTL_FIELD, ASCENDING)], expireAfterSeconds=seconds)
        except OperationFailure as exc:
            if exc.code not in _INDEX_CONFLICT_CODES:
                raise
            # The index exists with another retention: change it in place.
            await coll.database.command(
                {"collMod": coll.name, "index": {"keyPattern": {TTL_FIELD: ASCENDING}, "expireAfterSeconds": seconds}}
            )
            logger.info(
                "The retention of a table was changed.",
                extra={"table": coll.name, "expire_after_seconds": seconds},
            )

    async def close(self) -> None:
        """Close the client and its connection pool."""
        client, self._client = self._client, None
        self._indexed.clear()
        if client is not None:
            await client.close()

    async def write(self, key: BatchKey, batch: Batch) -> None:
        """Insert one batch as one document; see :meth:`write_many`."""
        await self.write_many([(key, batch)])

    async def write_many(self, items: Sequence[tuple[BatchKey, Batch]]) -> None:
        """Insert batches with unordered bulk inserts, one per table.

        Each document's ``_id`` is the batch ``uid``, so a retry after an unknown outcome meets
        duplicate-key errors for what was stored already; those count as success.

        Raises:
            StoreError: an insert (or a table's first index creation) failed; the caller keeps
                the batches and retries.
        """
        by_table: dict[str, list[Document]] = {}
        for key, batch in items:
            by_table.setdefault(key.table, []).append(_document(key, batch))
        for table, docs in by_table.items():
            await self._ensure_indexes(table)
            try:
                await self._collection(table).insert_many(docs, ordered=False)
            except BulkWriteError as exc:
                errors = exc.details.get("writeErrors", [])
                if any(e.get("code") != _DUPLICATE_KEY for e in errors) or exc.details.get("writeConcernErrors"):
                    raise self._error(f"writing {len(docs)} batches of {table}", exc) from exc
            except _DRIVER_ERRORS as exc:
                raise self._error(f"writing {len(docs)} batches of {table}", exc) from exc

    async def read(self, key: BatchKey, start: int, end: int, *, max_rows: int | None = None) -> pl.DataFrame:
        """Rows of the batches of ``key`` overlapping ``[start, end]``; see :class:`~wadm.store.base.Store`.

        Raises:
            StoreError: the server failed or a stored batch could not be decoded.
        """
        coll = self._collection(key.table)
        query = {
            "venue": key.venue.value,
            "market": key.market.value,
            "symbol": key.symbol,
            "start": {"$lte": end},
            "end": {"$gte": start},
        }
        try:
            cursor = coll.find(query, projection={"start": 1, "end": 1, "count": 1}, sort=[("start", ASCENDING)])
            index_docs = await cursor.to_list()
        except _DRIVER_ERRORS as exc:
            raise self._error(f"reading {key}", exc) from exc
        try:
            metas = [BatchMeta(d["_id"], int(d["start"]), int(d["end"]), int(d["count"])) for d in index_docs]
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"mongodb store {self.host}/{self.database}: bad index fields in {key}") from exc
        chosen = select_batches(metas, max_rows)
        if not chosen:
            return pl.DataFrame()
        found: dict[Any, pl.DataFrame | bytes | None] = {m.handle: self._decoded.get(m.handle) for m in chosen}
        missing = [h for h, f in found.items() if f is None]
        if missing:
            try:
                blob_docs = await coll.find({"_id": {"$in": missing}}, projection={"data": 1}).to_list()
            except _DRIVER_ERRORS as exc:
                raise self._error(f"reading {key}", exc) from exc
            for d in blob_docs:
                if not isinstance(d.get("data"), bytes):
                    raise StoreError(f"mongodb store {self.host}/{self.database}: a batch of {key} has no data")
                found[d["_id"]] = d["data"]
        parts = [(h, f) for h, f in found.items() if f is not None]  # in start order; swept in between: absent
        if sum(len(f) for _, f in parts if isinstance(f, bytes)) > _DECODE_INLINE_BYTES:
            return await asyncio.to_thread(self._decode_all, parts)
        return self._decode_all(parts)

    def _decode_all(self, parts: list[tuple[Any, pl.DataFrame | bytes]]) -> pl.DataFrame:
        """Decode the blobs among ``parts`` (keeping the small frames) and concatenate everything."""
        frames = []
        for handle, part in parts:
            if isinstance(part, bytes):
                part = decode_frame(part)
                self._decoded.put(handle, part)
            frames.append(part)
        return pl.concat(frames, how="vertical_relaxed") if frames else pl.DataFrame()

    async def latest(self, key: BatchKey, *, before: int | None = None) -> pl.DataFrame:
        """Rows of the batch of ``key`` that ends last (before ``before``); see :class:`~wadm.store.base.Store`."""
        query: Document = {"venue": key.venue.value, "market": key.market.value, "symbol": key.symbol}
        if before is not None:
            query["end"] = {"$lt": before}
        try:
            doc = await self._collection(key.table).find_one(
                query, projection={"data": 1}, sort=[("end", DESCENDING), ("start", DESCENDING)])
        except _DRIVER_ERRORS as exc:
            raise self._error(f"reading {key}", exc) from exc
        if doc is None:
            return pl.DataFrame()
        if not isinstance(doc.get("data"), bytes):
            raise StoreError(f"mongodb store {self.host}/{self.database}: a batch of {key} has no data")
        return decode_frame(doc["data"])

    async def sweep(self, table: str, older_than: int) -> int:
        """Delete batches of ``table`` that ended before ``older_than`` (event time, ns).

        Raises:
            StoreError: the delete failed.
        """
        # end < older_than implies end_at <= older_than in ms: that bound lets the TTL index
        # narrow the scan, and the exact test stays on ``end``.
        cutoff = _EPOCH + timedelta(milliseconds=older_than // NS_PER_MS)
        try:
            coll = self._collection(table)
            result = await coll.delete_many({TTL_FIELD: {"$lte": cutoff}, "end": {"$lt": older_than}})
        except _DRIVER_ERRORS as exc:
            raise self._error(f"sweeping {table!r}", exc) from exc
        return result.deleted_count

    async def healthcheck(self) -> bool:
        """True when the server answers a ``ping``."""
        if self._client is None:
            return False
        try:
            await self._client.admin.command("ping")
        except _DRIVER_ERRORS:
            return False
        return True


def uri_database(uri: str) -> str | None:
    """The database a connection string names (``mongodb://host/db?opt=1`` gives ``db``), or None."""
    rest = uri.split("://", 1)[-1].split("?", 1)[0]
    _, slash, path = rest.partition("/")
    return unquote(path) or None if slash else None


def _redact(uri: str) -> tuple[str, str | None]:
    """Return the host list of a connection string and its password, without parsing DNS.

    ``mongodb://user:secret@a:27017,b:27017/db?opt=1`` gives ``("a:27017,b:27017", "secret")``.
    """
    rest = uri.split("://", 1)[-1]
    authority = rest.split("/", 1)[0].split("?", 1)[0]
    userinfo, at, hosts = authority.rpartition("@")
    password = userinfo.split(":", 1)[1] if at and ":" in userinfo else None
    return hosts or "localhost", password or None
