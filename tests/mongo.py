"""A MongoDB wire server for tests: nx-27017 (a dev dependency) or ``WADM_TEST_MONGODB_URI``.

By default the session starts ``nx-27017`` (a MongoDB wire server over SQLite) on a free
loopback port with its data, log and pid files under the session's temporary folder. Set
``WADM_TEST_MONGODB_URI`` to use a real MongoDB instead; each test then gets its own database,
dropped afterwards. The fixtures are registered in ``tests/conftest.py``.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from pymongo import MongoClient

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


STARTUP_TIMEOUT = 30.0  # seconds for nx-27017 to accept connections

_RUN_ID = uuid.uuid4().hex[:8]
_DATABASES = itertools.count()


def _start_nx_27017(folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Start nx-27017 on a free port and wait until it accepts connections."""
    from tests.conftest import free_port  # here: the conftest imports this module's fixtures

    command = nx_27017_command()
    for attempt in range(3):  # another process may take the free port before the server binds it
        port = free_port()
        run = folder / f"run{attempt}"
        run.mkdir()
        log_file, output_file = run / "nx-27017.log", run / "nx-27017.out"
        with output_file.open("wb") as output:  # the child keeps its own handle
            proc = subprocess.Popen(
                [
                    command,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--data-dir",
                    str(run / "data"),
                    "--pid-file",
                    str(run / "nx-27017.pid"),
                    "--log-file",
                    str(log_file),
                ],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=run,
            )
        listening = f"Listening on 127.0.0.1:{port}"
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while proc.poll() is None and time.monotonic() < deadline:
            # The log line proves that this process (not another one) bound the port.
            if log_file.exists() and listening in log_file.read_text(errors="replace"):
                if accepts_connections(port):
                    return proc, port
            time.sleep(0.05)
        _stop(proc)
    log = log_file.read_text(errors="replace")[-2000:] if log_file.exists() else "(no log)"
    output_text = output_file.read_text(errors="replace")[-2000:]
    pytest.fail(f"nx-27017 did not start; last log lines:\n{log}\noutput:\n{output_text}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def mongodb_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URI of the MongoDB server for this session: ``WADM_TEST_MONGODB_URI`` or a fresh nx-27017."""
    uri = os.environ.get(MONGODB_URI_ENV)
    if uri:
        yield uri
        return
    proc, port = _start_nx_27017(tmp_path_factory.mktemp("nx-27017"))
    try:
        yield f"mongodb://127.0.0.1:{port}/"
    finally:
        _stop(proc)


@pytest.fixture
def mongodb_database(mongodb_uri: str) -> Iterator[str]:
    """A database name unique to this test (and test run), dropped after the test."""
    with scratch_database(mongodb_uri) as name:
        yield name


@contextmanager
def scratch_database(uri: str) -> Iterator[str]:
    """A database name unique to this test run, dropped on the way out."""
    name = f"wadm_test_{_RUN_ID}_{next(_DATABASES)}"
    try:
        yield name
    finally:
        client: MongoClient[dict[str, object]]
        with MongoClient(uri, serverSelectionTimeoutMS=5000) as client:
            client.drop_database(name)


def with_database(uri: str, database: str) -> str:
    """``uri`` naming ``database`` (``mongodb://h:1/?x=1`` and ``db`` give ``mongodb://h:1/db?x=1``)."""
    base, _, options = uri.partition("?")
    scheme, _, rest = base.partition("://")
    hosts = rest.split("/", 1)[0]
    return f"{scheme}://{hosts}/{database}" + (f"?{options}" if options else "")
