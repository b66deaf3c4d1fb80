"""HTTPS in front of WADM: the compose profile ``https``, its Caddyfile and its entrypoint, for real.

A real ``wadm serve`` with API keys behind a real ``caddy run`` of deploy/Caddyfile (``tls
internal`` on loopback ports, see tests/caddy.py), reached over TLS that trusts only Caddy's local
root CA: the API needs a key, /health stays usable without one, plain http never gets data. The
caddy service's entrypoint runs under BusyBox, as in the caddy image, against a WADM with and
without keys. The compose file itself is read to check that it runs exactly these files.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.caddy import CADDYFILE, ENTRYPOINT, caddy_command, caddy_proxy, run_entrypoint, ssl_context
from tests.conftest import free_port
from tests.procs import wadm

KEY = "h" * 32 + "-https"
ENV = {"BINANCE_SYMBOLS": "BTCUSDT", "BINANCE_USDM_SYMBOLS": "", "BYBIT_SYMBOLS": "", "BYBIT_SPOT_SYMBOLS": ""}
COMPOSE = CADDYFILE.parent.parent / "docker-compose.yml"


@dataclass
class Https:
    url: str
    ca_file: Path
    client: httpx.Client  # trusts Caddy's local CA only
    http_port: int  # Caddy's plain-http port (redirects)
    wadm_port: int


@pytest.fixture(scope="module")
def wadm_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    port = free_port()
    data = tmp_path_factory.mktemp("https") / "data"
    with wadm("serve", {**ENV, "WADM_DATA_DIR": str(data), "WADM_API_KEYS": KEY, "WADM_RATE_LIMIT": "0"}, port):
        yield port


@pytest.fixture(scope="module")
def https(wadm_port: int) -> Iterator[Https]:
    http_port = free_port()
    with caddy_proxy(wadm_port, http_port=http_port) as (url, ca_file):
        with httpx.Client(base_url=url, verify=ssl_context(ca_file), timeout=30) as client:
            yield Https(url, ca_file, client, http_port, wadm_port)


def test_the_api_needs_a_key_over_https(https: Https) -> None:
    bare = https.client.get("/api/v1/symbols")
    assert bare.status_code == 401 and bare.headers["content-type"].startswith("application/json"), bare.text
    assert bare.json()["error"]["code"] == "unauthorized" and bare.headers["www-authenticate"].startswith("Bearer")
    for headers in ({"Authorization": f"Bearer {KEY}"}, {"X-API-Key": KEY}):
        r = https.client.get("/api/v1/symbols", headers=headers)
        assert r.status_code == 200, (headers.keys(), r.text)
        assert [s["symbol"] for s in r.json()["symbols"]] == ["BTCUSDT"]
    wrong = https.client.get("/api/v1/symbols", headers={"X-API-Key": KEY[:-1]})
    assert wrong.status_code == 401


def test_health_is_usable_without_a_key_and_says_only_the_status(https: Https) -> None:
    r = https.client.get("/health")
    assert r.status_code in (200, 503) and r.json() == {"status": r.json()["status"]}
    full = https.client.get("/health", headers={"Authorization": f"Bearer {KEY}"})
    assert full.status_code == r.status_code and "streams" in full.json()


def test_answers_carry_hsts_and_no_server_header(https: Https) -> None:
    for path, headers in (("/health", {}), ("/api/v1/symbols", {}), ("/api/v1/symbols", {"X-API-Key": KEY})):
        r = https.client.get(path, headers=headers)
        assert r.headers["strict-transport-security"].startswith("max-age="), (path, r.headers)
        assert r.headers["x-content-type-options"] == "nosniff"
        assert "server" not in r.headers, (path, r.headers["server"])


def test_the_certificate_is_checked(https: Https) -> None:
    # The public CAs do not know Caddy's local root: a client that trusts only them refuses the site.
    with pytest.raises(httpx.ConnectError), httpx.Client(timeout=10) as public:
        public.get(f"{https.url}/health")


def test_plain_http_never_gets_an_answer_from_wadm(https: Https) -> None:
    port = https.url.rsplit(":", 1)[1]
    try:
        r = httpx.get(f"http://localhost:{port}/api/v1/symbols", timeout=10)
    except httpx.HTTPError:
        pass  # refused outright: fine
    else:
        assert r.status_code == 400 or r.is_redirect, (r.status_code, r.text)
        assert "symbols" not in r.text and "unauthorized" not in r.text, "plain http reached WADM"
    # The http port only redirects to https, path and query kept.
    r = httpx.get(f"http://localhost:{https.http_port}/api/v1/symbols?x=1", timeout=10)
    assert r.status_code in (301, 308), (r.status_code, r.text)
    location = r.headers["location"]
    assert location.startswith("https://localhost") and location.endswith("/api/v1/symbols?x=1"), location
    assert r.text == ""


def test_an_unreachable_wadm_is_a_json_error() -> None:
    with caddy_proxy(free_port()) as (url, ca_file), httpx.Client(verify=ssl_context(ca_file), timeout=30) as client:
        down = client.get(f"{url}/api/v1/symbols", headers={"X-API-Key": KEY})
    assert down.status_code == 502 and down.json()["error"]["code"] == "proxy_error", down.text
    assert down.headers["strict-transport-security"].startswith("max-age=") and "server" not in down.headers


# ---- the caddy service's entrypoint: refuse to put WADM on the internet without keys ----------------


def test_the_entrypoint_starts_caddy_only_for_a_wadm_with_keys(https: Https) -> None:
    env = {"WADM_DOMAIN": "wadm.example.com", "WADM_UPSTREAM": f"127.0.0.1:{https.wadm_port}"}
    code, out = run_entrypoint(env, "echo", "caddy would start")
    assert code == 0 and out.splitlines()[-1] == "caddy would start", out
    assert "requires API keys" in out and KEY not in out


def test_the_entrypoint_refuses_a_wadm_without_keys(tmp_path: Path) -> None:
    port = free_port()
    with wadm("serve", {**ENV, "WADM_DATA_DIR": str(tmp_path / "data"), "WADM_API_KEYS": ""}, port):
        code, out = run_entrypoint({"WADM_DOMAIN": "wadm.example.com", "WADM_UPSTREAM": f"127.0.0.1:{port}"},
                                   "echo", "caddy would start")
    assert code == 1 and "caddy would start" not in out, out
    assert "refusing to start" in out and "WADM_API_KEYS" in out and "answers without API keys" in out


@pytest.mark.parametrize("domain", ["", "wadm example.com", "-x.example.com", "wadm..example.com"])
def test_the_entrypoint_refuses_without_a_usable_domain(https: Https, domain: str) -> None:
    env = {"WADM_UPSTREAM": f"127.0.0.1:{https.wadm_port}", **({"WADM_DOMAIN": domain} if domain else {})}
    code, out = run_entrypoint(env, "echo", "caddy would start")
    assert code == 1 and "caddy would start" not in out, out
    assert "refusing to start" in out and "WADM_DOMAIN" in out


def test_the_entrypoint_gives_up_on_a_wadm_that_never_answers() -> None:
    env = {"WADM_DOMAIN": "wadm.example.com", "WADM_UPSTREAM": f"127.0.0.1:{free_port()}", "WADM_WAIT": "1"}
    code, out = run_entrypoint(env, "echo", "caddy would start")
    assert code == 1 and "did not answer" in out and "caddy would start" not in out, out


def test_the_caddyfile_as_the_container_runs_it() -> None:
    # In the container only WADM_DOMAIN is set: every other placeholder takes its default.
    env = {"WADM_DOMAIN": "wadm.example.com"}
    code, out, err = caddy_command(["validate"], env)
    assert code == 0 and "Valid configuration" in out + err, out + err
    code, out, err = caddy_command(["adapt"], env)
    assert code == 0, err
    config = json.loads(out)
    assert config["admin"]["listen"] == "localhost:2019"
    http = config["apps"]["http"]
    assert (http["http_port"], http["https_port"]) == (80, 443)
    [server] = http["servers"].values()
    assert server["listen"] == ["0.0.0.0:443"] and server["protocols"] == ["h1", "h2"]
    [site] = server["routes"]
    assert site["match"] == [{"host": ["wadm.example.com"]}]
    assert '"dial":"wadm:8920"' in out.replace(" ", "")
    # No `tls internal`: the certificate comes from a public ACME CA (Let's Encrypt, ZeroSSL).
    assert "internal" not in json.dumps(config.get("apps", {}).get("tls", {}))
    assert config["apps"]["pki"]["certificate_authorities"]["local"]["install_trust"] is False


# ---- the compose file runs these very files -------------------------------------------------------


def test_the_compose_profile_runs_this_caddyfile_and_entrypoint() -> None:
    text = COMPOSE.read_text()
    code = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    guarded = {m for line in code for m in re.findall(r"\$\{(\w+):?\?", line)}
    # The database passwords are required by every start; the profile's own needs are checked in
    # its container: a ${VAR:?} guard on them would stop `docker compose up -d` without the profile too.
    assert guarded == {"MONGO_ROOT_PASSWORD", "MONGO_APP_PASSWORD"}, guarded
    services: dict[str, Any] = yaml.safe_load(text)["services"]
    caddy, wadm_service = services["caddy"], services["wadm"]
    assert caddy["profiles"] == ["https"] and caddy["image"].startswith("caddy:2")
    assert all("profiles" not in services[name] for name in ("wadm", "mongo")), "plain `up -d` must start them"
    assert sorted(caddy["ports"]) == ["443:443", "80:80"]
    assert wadm_service["ports"] == ["127.0.0.1:${WADM_PORT:-8920}:8920"], "WADM stays on loopback"
    mounts = dict(v.removesuffix(":ro").split(":", 1) for v in caddy["volumes"] if v.startswith("./"))
    assert mounts["./deploy/Caddyfile"] == "/etc/caddy/Caddyfile"
    assert caddy["entrypoint"] == ["/bin/sh", mounts["./deploy/caddy-entrypoint.sh"]]
    assert "/etc/caddy/Caddyfile" in caddy["command"]
    assert (COMPOSE.parent / "deploy/Caddyfile").resolve() == CADDYFILE.resolve() and ENTRYPOINT.exists()
    assert set(caddy["environment"]) == {"WADM_DOMAIN"}
