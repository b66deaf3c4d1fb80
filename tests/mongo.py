"""A MongoDB wire server for tests: nx-27017 (a dev dependency) or ``WADM_TEST_MONGODB_URI``."""

from __future__ import annotations

import shutil
import socket
import sys
from pathlib import Path

import pytest

MONGODB_URI_ENV = "WADM_TEST_MONGODB_URI"


def nx_27017_command() -> str:
    beside_python = Path(sys.executable).with_name("nx-27017")
    found = str(beside_python) if beside_python.exists() else shutil.which("nx-27017")
    if found is None:
        pytest.fail(f"nx-27017 is not installed (a dev dependency); or set {MONGODB_URI_ENV}")
    return found


def accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False
