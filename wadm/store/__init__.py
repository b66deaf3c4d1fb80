"""Stores of columnar batches: MongoDB (production) and embedded SQLite (default)."""

from pathlib import Path

from wadm.store.base import BatchMeta, Store, select_batches
from wadm.store.codec import Batch, decode_frame, encode_batch
from wadm.store.sqlite import SqliteStore

__all__ = [
    "Batch",
    "BatchMeta",
    "SqliteStore",
    "Store",
    "decode_frame",
    "encode_batch",
    "make_store",
    "select_batches",
]


def make_store(mongodb_uri: str, data_dir: Path, retention: dict[str, int]) -> Store:
    """MongoDB when a URI is given, else the embedded SQLite store in ``data_dir``.

    Args:
        mongodb_uri: empty for the embedded store; the database is the one the URI names
            (``mongodb://host/mydb``), ``wadm`` when it names none.
        data_dir: folder of the embedded store.
        retention: seconds each table keeps (MongoDB enforces it with TTL indexes too).
    """
    if mongodb_uri:
        from wadm.store.mongo import MongoStore, uri_database

        return MongoStore(mongodb_uri, database=uri_database(mongodb_uri) or "wadm", retention=retention)
    return SqliteStore(data_dir / "wadm.db")
