"""API keys on the REST API, over real HTTP to ``wadm serve`` under Granian.

With ``WADM_API_KEYS`` set every ``/api/v1/*`` path of ``/openapi.json`` and ``/metrics`` answer
401 without a key and their usual answer with one; ``/health`` stays usable by a container's
health check; a key past its rate answers 429 with ``Retry-After``; keys never reach the logs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.procs import Proc, start, stop, wadm, wait_for

KEY, OTHER = "k" * 24 + "-laptop", "0123456789abcdef-phone"
ENV = {"BINANCE_SYMBOLS": "BTCUSDT", "BINANCE_USDM_SYMBOLS": "", "BYBIT_SYMBOLS": "", "BYBIT_SPOT_SYMBOLS": ""}


def _serve(tmp_path: Path, **env: str) -> Iterator[tuple[str, Proc]]:
    port = free_port()
    with wadm("serve", {**ENV, "WADM_DATA_DIR": str(tmp_path / "data"), **env}, port) as proc:
        yield f"http://127.0.0.1:{port}", proc
    assert KEY not in proc.output and OTHER not in proc.output, "a key reached the log"


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Proc]]:
    yield from _serve(tmp_path_factory.mktemp("keys"), WADM_API_KEYS=f"{KEY},{OTHER}", WADM_RATE_LIMIT="0")


def _paths(api: str) -> list[str]:
    doc = httpx.get(f"{api}/openapi.json", timeout=10).json()
    return [p.replace("{symbol}", "BTCUSDT") for p in doc["paths"] if p.startswith("/api/v1/")]


def test_every_api_path_and_metrics_need_a_key(api: tuple[str, Proc]) -> None:
    url, _ = api
    paths = [*_paths(url), "/metrics"]
    assert len(paths) >= 12, paths
    for path in paths:
        for headers in ({}, {"Authorization": "Bearer wrong-key-0123456789"}, {"X-API-Key": KEY[:-1]},
                        {"Authorization": f"Basic {KEY}"}):
            r = httpx.get(url + path, headers=headers, timeout=30)
            assert r.status_code == 401, (path, headers, r.text)
            assert r.json()["error"]["code"] == "unauthorized" and r.headers["www-authenticate"].startswith("Bearer")
            assert KEY not in r.text
        for headers in ({"Authorization": f"Bearer {KEY}"}, {"authorization": f"bearer {OTHER}"},
                        {"X-API-Key": KEY}):
            r = httpx.get(url + path, headers=headers, timeout=30)
            # `wadm serve` has no live book: that one path says so (503 not_ready), the rest answer.
            expected = 503 if path == "/api/v1/orderbook/BTCUSDT" else 200
            assert r.status_code == expected, (path, r.status_code, r.text[:300])


def test_health_says_only_the_status_without_a_key(api: tuple[str, Proc]) -> None:
    url, _ = api
    bare = httpx.get(f"{url}/health", timeout=10)
    assert bare.status_code in (200, 503) and set(bare.json()) == {"status"}
    full = httpx.get(f"{url}/health", headers={"X-API-Key": KEY}, timeout=10)
    assert full.status_code == bare.status_code and "streams" in full.json() and full.json()["auth"] == "api_keys"
    assert httpx.get(f"{url}/openapi.json", timeout=10).status_code == 200, "the contract itself stays readable"


def test_a_key_past_its_rate_is_answered_429_with_retry_after(tmp_path: Path) -> None:
    for url, _ in _serve(tmp_path, WADM_API_KEYS=KEY, WADM_RATE_LIMIT="1", WADM_RATE_BURST="3"):
        headers = {"Authorization": f"Bearer {KEY}"}
        statuses = [httpx.get(f"{url}/api/v1/symbols", headers=headers, timeout=10) for _ in range(6)]
        assert [r.status_code for r in statuses[:3]] == [200, 200, 200]
        limited = [r for r in statuses if r.status_code == 429]
        assert limited and all(int(r.headers["retry-after"]) >= 1 for r in limited)
        assert limited[0].json()["error"]["code"] == "rate_limited"
        assert httpx.get(f"{url}/health", timeout=10).status_code in (200, 503), "health is never rate limited"
        wait_for(lambda h=headers, u=url: httpx.get(f"{u}/api/v1/symbols", headers=h, timeout=10).status_code == 200,
                 5, "the bucket to refill")


def test_without_keys_health_says_auth_none_and_everything_is_open(tmp_path: Path) -> None:
    for url, _ in _serve(tmp_path):
        body = httpx.get(f"{url}/health", timeout=10).json()
        assert body["auth"] == "none" and "streams" in body
        assert httpx.get(f"{url}/api/v1/symbols", timeout=10).status_code == 200


def test_listening_beyond_loopback_without_keys_warns_at_start(tmp_path: Path) -> None:
    port = free_port()
    proc = start(["serve"], {**ENV, "WADM_DATA_DIR": str(tmp_path / "data"), "WADM_HOST": "0.0.0.0",
                             "WADM_PORT": str(port)})
    try:
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code in (200, 503), 60,
                 "wadm to answer /health", proc)
        line = next(line for line in proc.lines if "no WADM_API_KEYS" in line)
        assert "WARNING" in line and "WADM_HOST=0.0.0.0" in line
    finally:
        stop(proc)


def test_a_short_key_works_and_is_warned_about_at_start(tmp_path: Path) -> None:
    port = free_port()
    proc = start(["serve"], {**ENV, "WADM_DATA_DIR": str(tmp_path / "data"), "WADM_API_KEYS": "secret",
                             "WADM_PORT": str(port)})
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: httpx.get(f"{url}/health", timeout=2).status_code in (200, 503), 60,
                 "wadm to answer /health", proc)
        assert httpx.get(f"{url}/api/v1/symbols", timeout=10).status_code == 401
        assert httpx.get(f"{url}/api/v1/symbols", headers={"Authorization": "Bearer secret"},
                         timeout=10).status_code == 200
        line = next(line for line in proc.lines if "shorter than 16 characters" in line)
        assert "WARNING" in line and "secret" not in line
    finally:
        stop(proc)
