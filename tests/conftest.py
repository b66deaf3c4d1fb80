"""Shared fixtures: recorded frames, free ports."""

from __future__ import annotations

import gzip
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

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
