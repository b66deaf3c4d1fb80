"""The Docker image's commands, run unchanged in a plain venv built the way the Dockerfile builds
the image (``pip install -r requirements.txt``, then the project without dependencies).

No Docker engine is needed: the Dockerfile's ``ENV``, ``CMD`` and ``HEALTHCHECK`` are read from the
file itself, so a change there is what this test runs. ``CMD`` runs against the exchange
emulator; the health check command must fail before WADM is healthy and pass once it is; SIGTERM
(the image's ``STOPSIGNAL``) stops it cleanly.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.procs import emulator, spawn, stop, wait_for

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _image() -> tuple[dict[str, str], list[str], list[str], str]:
    """The image's ENV, CMD, HEALTHCHECK command and STOPSIGNAL."""
    env: dict[str, str] = {}
    cmd: list[str] = []
    check: list[str] = []
    signal_name = "SIGTERM"
    for word, rest in _instructions():
        if word == "ENV":
            env.update(dict(pair.split("=", 1) for pair in shlex.split(rest)))
        elif word == "CMD":
            cmd = json.loads(rest)
        elif word == "HEALTHCHECK":
            check = json.loads(rest[rest.index("CMD") + 3:].strip())
        elif word == "STOPSIGNAL":
            signal_name = rest
    return env, cmd, check, signal_name


def test_the_images_commands_run_in_a_plain_venv(tmp_path: Path) -> None:
    env, cmd, check, signal_name = _image()
    assert cmd == ["wadm", "run"] and check[0] == "python" and signal_name == "SIGTERM"
    assert env["WADM_HOST"] == "0.0.0.0" and env["WADM_DATA_DIR"] == "/data"
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "-r", str(ROOT / "requirements.txt")], check=True, timeout=600)
    subprocess.run([*pip, "--no-deps", str(ROOT)], check=True, timeout=600)

    data = tmp_path / "data"
    with emulator("--symbols", "BTCUSDT", "--markets", "spot", "--rate", "50", "--seed", "3") as (_, emu_port):
        run_env = {
            **env,
            "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",  # the image's PATH finds its python first
            "WADM_DATA_DIR": str(data),  # /data is the image's volume; here a folder of the test
            "BINANCE_SYMBOLS": "BTCUSDT", "BINANCE_USDM_SYMBOLS": "", "BYBIT_SYMBOLS": "", "BYBIT_SPOT_SYMBOLS": "",
            "WADM_CHANNELS": "trades", "COLLECTORS_START_DELAY": "0",
            "WADM_BINANCE_SPOT_WS_URL": f"ws://127.0.0.1:{emu_port}/binance/spot",
            "WADM_BINANCE_SPOT_REST_URL": f"http://127.0.0.1:{emu_port}/binance/spot",
        }
        run_env.pop("PYTHONDONTWRITEBYTECODE", None)

        def healthy() -> bool:
            return subprocess.run(check, env=run_env, capture_output=True, timeout=10).returncode == 0

        # The health check probes port 8920 as the image does: nothing else may hold it here.
        free = subprocess.run(check, env=run_env, capture_output=True, timeout=10)
        if free.returncode == 0:
            pytest.skip("something on this machine already answers on 127.0.0.1:8920")
        app = spawn(cmd, run_env, cwd=tmp_path)
        try:
            wait_for(healthy, 60, "the image's health check to pass", app)
            assert httpx.get("http://127.0.0.1:8920/health", timeout=5).json()["status"] == "ok"
            assert (data / "wadm.db").exists()
        finally:
            code = stop(app)
        assert code == 0, app.output
        assert "Stopped;" in app.output and "Traceback" not in app.output
    assert not healthy()
