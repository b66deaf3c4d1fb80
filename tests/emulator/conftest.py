"""Fixtures for the emulator tests: real loopback sockets, picows clients, httpx."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest_asyncio
from picows import ws_connect

from wadm.emulator import Emulator

from .helpers import TIMEOUT, Client

Connect = Callable[..., Awaitable[Client]]
Http = Callable[[Emulator], httpx.AsyncClient]


@pytest_asyncio.fixture
async def connect() -> AsyncIterator[Connect]:
    """Factory that opens picows clients and closes them after the test."""
    clients: list[Client] = []

    async def _connect(url: str, **kwargs: Any) -> Client:
        _, client = await ws_connect(lambda: Client(**kwargs), url, enable_auto_pong=False)
        assert isinstance(client, Client)
        clients.append(client)
        return client

    yield _connect
    for client in clients:
        await client.close()


@pytest_asyncio.fixture
async def http() -> AsyncIterator[Http]:
    """Factory of httpx clients bound to an emulator's control endpoints."""
    opened: list[httpx.AsyncClient] = []

    def _make(emu: Emulator) -> httpx.AsyncClient:
        client = httpx.AsyncClient(base_url=emu.http_url, timeout=TIMEOUT)
        opened.append(client)
        return client

    yield _make
    for client in opened:
        await client.aclose()
