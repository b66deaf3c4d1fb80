"""Real processes for integration and end-to-end tests: ``wadm`` and its emulator (Caddy: tests/caddy.py)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx


@dataclass
class Proc:
    """A running child process and everything it printed."""

    popen: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    pump: threading.Thread | None = None

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


def _pump(proc: Proc) -> None:
    assert proc.popen.stdout is not None
    for line in proc.popen.stdout:
        proc.lines.append(line.rstrip("\n"))


def spawn(argv: list[str], env: dict[str, str], cwd: Path | None = None) -> Proc:
    """Start ``argv`` with exactly ``env``, stdout and stderr captured, in a session of its own."""
    popen = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=cwd,
        start_new_session=True,
    )
    proc = Proc(popen)
    proc.pump = threading.Thread(target=_pump, args=(proc,), daemon=True)
    proc.pump.start()
    return proc


def start(args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> Proc:
    """Start ``python -m wadm ARGS`` with stdout and stderr captured."""
    return spawn([sys.executable, "-m", "wadm", *args], {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, cwd)


def stop(proc: Proc, timeout: float = 40) -> int:
    """SIGTERM the process (as docker does) and wait for it to exit; SIGKILL if it will not."""
    if proc.popen.poll() is None:
        proc.popen.send_signal(signal.SIGTERM)
        try:
            proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.popen.pid, signal.SIGKILL)
            proc.popen.wait()
    if proc.pump is not None:
        proc.pump.join(5)
    if proc.popen.stdout is not None:
        proc.popen.stdout.close()
    return proc.popen.returncode


def wait_for(predicate: object, timeout: float, what: str, proc: Proc | None = None, interval: float = 0.2) -> None:
    """Poll ``predicate()`` until it is true or fail the test with ``what``."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():  # type: ignore[operator]
                return
        except (httpx.HTTPError, OSError) as exc:
            last_exc = exc
        if proc is not None and proc.popen.poll() is not None:
            raise AssertionError(f"process exited ({proc.popen.returncode}) while waiting for {what}:\n{proc.output}")
        time.sleep(interval)
    tail = "\n".join(proc.lines[-60:]) if proc else ""
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last error: {last_exc})\n{tail}")


@contextmanager
def emulator(*args: str) -> Iterator[tuple[Proc, int]]:
    """Run ``wadm emulate --port 0 ARGS``; yield the process and its port."""
    proc = start(["emulate", "--port", "0", *args])
    port: list[int] = []

    def listening() -> bool:
        for line in proc.lines:
            m = re.search(r"listening on ws://[\d.]+:(\d+)", line)
            if m:
                port.append(int(m.group(1)))
                return True
        return False

    try:
        wait_for(listening, 30, "the emulator to listen", proc)
        yield proc, port[0]
    finally:
        stop(proc)


@contextmanager
def wadm(command: str, env: dict[str, str], port: int, cwd: Path | None = None) -> Iterator[Proc]:
    """Run ``wadm COMMAND`` (words split on spaces) with ``env`` until its HTTP port answers; SIGTERM it afterwards."""
    proc = start(command.split(), {**env, "WADM_HOST": "127.0.0.1", "WADM_PORT": str(port)}, cwd=cwd)
    try:
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code in (200, 503), 60,
                 "wadm to answer /health", proc)
        yield proc
    finally:
        stop(proc)


def run_to_exit(args: list[str], env: dict[str, str], cwd: Path | None = None, timeout: float = 60) -> tuple[int, str]:
    """Run ``python -m wadm ARGS`` until it exits on its own; return its exit code and output.

    The process is expected to stop by itself (a refused configuration, ``check-config``); one
    still running after ``timeout`` seconds is stopped and the test fails.
    """
    proc = start(args, env, cwd=cwd)
    try:
        proc.popen.wait(timeout)
    except subprocess.TimeoutExpired:
        stop(proc)
        raise AssertionError(f"wadm {' '.join(args)} still ran after {timeout} s:\n{proc.output}") from None
    stop(proc)
    return proc.popen.returncode, proc.output


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (from ``/proc/<pid>/task/*/children``); empty once it is gone."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return sorted(set(out))


def granian_worker(proc: Proc, timeout: float = 30) -> int:
    """The pid of the one Granian worker of a ``wadm run``/``wadm serve --workers 1`` process.

    Granian's main process only supervises; the worker (its child) runs the app, the collectors
    and the API, so it is the process whose memory matters.
    """
    found: list[int] = []

    def one_child() -> bool:
        found[:] = children(proc.popen.pid)
        return len(found) == 1

    wait_for(one_child, timeout, "the Granian worker process", proc)
    return found[0]


def rss_mb(pid: int) -> float | None:
    """Resident memory of ``pid`` in MB (``VmRSS`` of ``/proc/<pid>/status``); None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


def raise_fd_limit() -> int:
    """Raise this process's soft ``RLIMIT_NOFILE`` to its hard limit; return the new soft limit.

    Children started afterwards inherit it, as a container inherits its ``ulimits``.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


def stored_trades(api: str, symbol: str = "BTCUSDT", *, limit: int = 10_000, timeout: float = 60,
                  **params: str) -> list[dict[str, Any]]:
    """Every trade the API serves for ``symbol`` (over the last hour unless ``params`` say), paging with the cursor."""
    trades: list[dict[str, Any]] = []
    query: dict[str, Any] = {"limit": limit, **params}
    if "start" not in query and "end" not in query:
        query.setdefault("window", "1h")
    while True:
        r = httpx.get(f"{api}/api/v1/trades/{symbol}", params=query, timeout=timeout)
        assert r.status_code == 200, r.text
        body = r.json()
        trades += body["trades"]
        if body["next"] is None:
            return trades
        query["cursor"] = body["next"]


def stored_trade_ids(api: str, symbol: str = "BTCUSDT", *, limit: int = 10_000, timeout: float = 60,
                     **params: str) -> list[Any]:
    """Every trade id the API serves for ``symbol`` over the last hour, paging with the cursor."""
    return [t["id"] for t in stored_trades(api, symbol, limit=limit, timeout=timeout, **params)]
