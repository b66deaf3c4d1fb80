"""Shared fixtures and helpers: recorded frames, free ports, an independent book rebuild."""

from __future__ import annotations

import gc
import gzip
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.mongo import mongodb_database, mongodb_uri

__all__ = ["mongodb_database", "mongodb_uri"]  # fixtures for every test folder

DATA = Path(__file__).parent / "data"


def recorded_frames(name: str, contains: bytes = b"") -> Iterator[tuple[int, bytes]]:
    """Yield (receive time ns, raw frame) from a recording in tests/data/binance."""
    with gzip.open(DATA / "binance" / name, "rb") as fh:
        for line in fh:
            ts, _, frame = line.rstrip(b"\n").partition(b" ")
            if contains in frame:
                yield int(ts), frame


def free_port() -> int:
    """A TCP port on loopback that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def pymongo_mid_handshake() -> Iterator[None]:
    """For tests whose MongoDB never answers: collect the socket PyMongo leaves behind here.

    When a client closes while its monitor is still waiting for a server's handshake, PyMongo
    does not close that socket; its ResourceWarning would surface (as an error) in whichever
    later test happens to run the garbage collector.
    """
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def rebuild(snapshot: dict[str, Any], diffs: list[dict[str, Any]], futures: bool) -> tuple[dict[float, float], ...]:
    """The book from a REST snapshot and the diffs after it, applied by hand (PROTOCOLS.md §1.3, §2.3):
    an independent check of the sync's result."""
    last = snapshot["lastUpdateId"]
    bids = {float(p): float(q) for p, q in snapshot["bids"]}
    asks = {float(p): float(q) for p, q in snapshot["asks"]}
    for d in diffs:
        if d["u"] < last or (not futures and d["u"] == last):
            continue
        for side, key in ((bids, "b"), (asks, "a")):
            for p, q in d[key]:
                if float(q) == 0:
                    side.pop(float(p), None)
                else:
                    side[float(p)] = float(q)
    return {p: q for p, q in bids.items() if q}, {p: q for p, q in asks.items() if q}
