"""A real Caddy in front of a real WADM, running the repository's own deploy/Caddyfile.

``caddy_proxy(upstream_port)`` runs ``caddy run`` on that very file with the overrides the file
reads from its environment: ``tls internal`` (Caddy's own local CA), free loopback ports, the
admin endpoint off, and HOME and the XDG folders in a temporary directory, so the machine's trust
store and Caddy folders are never touched. It yields the ``https://`` URL and the PEM file of the
local root CA, for a client to trust (``ssl_context(ca)``; ``WADM_CA_FILE`` for ``wadm mcp``).

``run_entrypoint(...)`` runs deploy/caddy-entrypoint.sh, the compose caddy service's entrypoint,
under BusyBox with only BusyBox's applets on PATH, as the Alpine-based caddy image does.

Caddy and BusyBox must be installed (Debian: ``apt-get install caddy busybox``; .ci/run does it):
without them these tests fail with a message, they are not skipped.
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.conftest import free_port
from tests.procs import spawn, stop, wait_for

__all__ = ["CADDYFILE", "ENTRYPOINT", "caddy_command", "caddy_proxy", "run_entrypoint", "ssl_context"]

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
CADDYFILE = DEPLOY / "Caddyfile"
ENTRYPOINT = DEPLOY / "caddy-entrypoint.sh"
DOMAIN = "localhost"


def _need(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        raise AssertionError(f"{program} is not on PATH: install it (Debian: apt-get install {program}; "
                             ".ci/run does), these tests need the real program")
    return path


def ssl_context(ca_file: Path) -> ssl.SSLContext:
    """A client TLS context that trusts ``ca_file`` (and nothing else)."""
    return ssl.create_default_context(cafile=str(ca_file))


@contextmanager
def caddy_proxy(upstream_port: int, *, http_port: int | None = None) -> Iterator[tuple[str, Path]]:
    """Caddy with deploy/Caddyfile in front of ``127.0.0.1:upstream_port``; yield (https URL, root CA file).

    ``http_port`` is where Caddy redirects plain http:// (a free port when not given).
    """
    caddy = _need("caddy")
    https_port = free_port()
    with tempfile.TemporaryDirectory(prefix="wadm-caddy-") as tmp:
        home = Path(tmp)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "XDG_DATA_HOME": str(home / "data"),
            "XDG_CONFIG_HOME": str(home / "config"),
            "WADM_DOMAIN": DOMAIN,
            "WADM_UPSTREAM": f"127.0.0.1:{upstream_port}",
            "WADM_TLS": "tls internal",
            "WADM_CADDY_BIND": "127.0.0.1",
            "WADM_CADDY_HTTP_PORT": str(http_port or free_port()),
            "WADM_CADDY_HTTPS_PORT": str(https_port),
            "WADM_CADDY_ADMIN": "off",
        }
        ca_file = home / "data" / "caddy" / "pki" / "authorities" / "local" / "root.crt"
        url = f"https://{DOMAIN}:{https_port}"
        proc = spawn([caddy, "run", "--config", str(CADDYFILE), "--adapter", "caddyfile"], env, cwd=home)

        def serving() -> bool:
            if not ca_file.exists():
                return False
            with httpx.Client(verify=ssl_context(ca_file), timeout=2) as client:
                client.get(f"{url}/health")  # any answer: TLS works and Caddy routes (a 502 too)
            return True

        try:
            wait_for(serving, 30, "Caddy to serve HTTPS", proc)
            yield url, ca_file
        finally:
            stop(proc, timeout=15)


def caddy_command(args: list[str], env: dict[str, str], timeout: float = 60) -> tuple[int, str, str]:
    """Run ``caddy ARGS`` on deploy/Caddyfile with only ``env`` (and a temporary HOME); return code, stdout, stderr."""
    caddy = _need("caddy")
    with tempfile.TemporaryDirectory(prefix="wadm-caddy-") as tmp:
        home = {"HOME": tmp, "XDG_DATA_HOME": f"{tmp}/data", "XDG_CONFIG_HOME": f"{tmp}/config"}
        done = subprocess.run([caddy, *args, "--config", str(CADDYFILE), "--adapter", "caddyfile"],
                              env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **home, **env}, cwd=tmp,
                              capture_output=True, text=True, timeout=timeout)
    return done.returncode, done.stdout, done.stderr


def run_entrypoint(env: dict[str, str], *command: str, timeout: float = 60) -> tuple[int, str]:
    """Run deploy/caddy-entrypoint.sh COMMAND under BusyBox with ``env``; return its exit code and output."""
    busybox = _need("busybox")
    with tempfile.TemporaryDirectory(prefix="wadm-busybox-") as tmp:
        subprocess.run([busybox, "--install", "-s", tmp], check=True)
        done = subprocess.run([busybox, "sh", str(ENTRYPOINT), *command], env={"PATH": tmp, **env},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
    return done.returncode, done.stdout
