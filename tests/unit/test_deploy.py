"""The deployment files agree with each other and with what the service reads."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _services(path: Path) -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load(path.read_text())["services"]
    return services


def _example() -> dict[str, str]:
    lines = (ROOT / "deploy" / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_every_variable_of_the_example_reaches_a_service() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    used = set(re.findall(r"\$\{(\w+)", text))
    assert set(_example()) <= used, set(_example()) - used


def test_the_production_compose_is_hardened() -> None:
    services = _services(ROOT / "docker-compose.yml")
    mongo, wadm = services["mongo"], services["wadm"]
    assert "ports" not in mongo, "MongoDB is never published"
    assert "--auth" in mongo["command"] and "--wiredTigerCacheSizeGB" in mongo["command"]
    assert "MONGO_INITDB_ROOT_PASSWORD" in mongo["environment"]
    assert any(v.endswith("/docker-entrypoint-initdb.d/10-wadm-user.sh:ro") for v in mongo["volumes"])
    assert "@mongo:27017/wadm?authSource=wadm" in wadm["environment"]["MONGODB_URI"]
    for name, service in services.items():
        assert service["restart"] == "always", name
        assert service["mem_limit"], name
        assert service["logging"]["options"]["max-size"], name
    assert all(v.split(":")[0] in yaml.safe_load((ROOT / "docker-compose.yml").read_text())["volumes"]
               for s in services.values() for v in s.get("volumes", []) if not v.startswith("./"))


def test_the_scale_out_collector_has_the_same_settings_as_wadm() -> None:
    base = _services(ROOT / "docker-compose.yml")["wadm"]["environment"]
    scale = _services(ROOT / "deploy" / "docker-compose.scale.yml")
    collector = scale["collector"]["environment"]
    assert set(collector) == set(base)
    same = {k for k in base if k not in ("MONGODB_URI",)}
    assert {k: collector[k] for k in same} == {k: base[k] for k in same}
    assert collector["MONGODB_URI"].endswith("&replicaSet=rs0")
    assert scale["wadm"]["environment"]["MONGODB_URI"] == collector["MONGODB_URI"]
    assert scale["collector"]["command"] == ["wadm", "collect"]
    assert scale["wadm"]["command"][:3] == ["wadm", "serve", "--workers"]
