"""The ``wadm`` command: run | serve | emulate | check-config.

This is the only module that configures logging. The exchange emulator is imported only by
``wadm emulate``: a collecting or serving process never loads it.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import logging
import sys
from typing import Any

import orjson

from wadm.config import API_KEY_ADVISED, Settings, load_settings
from wadm.errors import ConfigError

__all__ = ["main", "make_asgi_app"]

_STD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class _Formatter(logging.Formatter):
    """One line per record: time, level, logger, message, then any ``extra=`` fields as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = {k: v for k, v in vars(record).items() if k not in _STD_ATTRS}
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        return line


def configure_logging(level: str) -> None:
    """Send WADM's (and the libraries') logs to stderr at ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("picows").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))


def _settings_or_exit() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        print(f"wadm: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _app(settings: Settings, *, data: bool = True) -> Any:
    from wadm.api.app import create_app, served
    from wadm.pipeline.service import Service
    from wadm.store import make_store

    configure_logging(settings.log_level)
    store = make_store(settings.mongodb_uri, settings.data_dir, settings.retention())
    service = Service(settings, store)
    return served(create_app(settings, store, service.live, lifespan=service, data=data))


def make_asgi_app() -> Any:
    """Granian's factory target of ``wadm run``: collectors and the API in one worker."""
    return _app(_settings_or_exit())


def make_api_app() -> Any:
    """Granian's factory target of ``wadm serve``: the API over the store, without collectors."""
    return _app(dataclasses.replace(_settings_or_exit(), collectors_enabled=False))


def make_collect_app() -> Any:
    """Granian's factory target of ``wadm collect``: collectors, with ``/health`` and ``/metrics`` only."""
    return _app(_settings_or_exit(), data=False)


# Connections each worker serves at once (Granian holds one permit per open connection, idle or
# not); the process needs more file descriptors than this (see docker-compose.yml ulimits).
MAX_CONNECTIONS = 4096
HEADER_READ_TIMEOUT_MS = 10_000  # a client that sends no complete request head in time is closed
# Granian's read buffer for a request head: a request line of 64 KB or more is answered 414, and a
# head past what the buffer holds (about 112 KB with this setting) 431, both with an empty body.
MAX_REQUEST_HEAD = 65_536


def _warn_if_open(settings: Settings) -> None:
    """Say loudly when the API listens beyond this machine without API keys, or has short keys."""
    short = sum(len(key) < API_KEY_ADVISED for key in settings.api_keys)
    if short:
        logging.getLogger(__name__).warning(
            "%d of the %d API keys are shorter than %d characters: easy to guess. Use long random keys "
            "(openssl rand -hex 32)", short, len(settings.api_keys), API_KEY_ADVISED)
    if settings.api_keys or ipaddress.ip_address(settings.host).is_loopback:
        return
    logging.getLogger(__name__).warning(
        "WADM_HOST=%s and no WADM_API_KEYS: anyone who can reach this address can read the API. Set "
        "WADM_API_KEYS (and serve it over HTTPS), or listen on 127.0.0.1 (in Docker: publish the port on "
        "127.0.0.1 only, as the compose file does)", settings.host)


def _serve(settings: Settings, workers: int, target: str) -> int:
    from granian.constants import HTTPModes, Interfaces, Loops
    from granian.http import HTTP1Settings
    from granian.server import Server

    server = Server(
        target,
        address=settings.host,
        port=settings.port,
        interface=Interfaces.ASGI,
        workers=workers,
        loop=Loops.uvloop,
        factory=True,
        log_access=False,
        workers_kill_timeout=60,
        # HTTP/1.1 only: in "auto" mode a socket that sends nothing is never timed out, and a
        # thousand of them would starve every other client (/health included).
        http=HTTPModes.http1,
        http1_settings=HTTP1Settings(header_read_timeout=HEADER_READ_TIMEOUT_MS, max_buffer_size=MAX_REQUEST_HEAD),
        backlog=2048,
        backpressure=MAX_CONNECTIONS,
    )
    server.serve()
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    settings = _settings_or_exit()
    configure_logging(settings.log_level)
    logging.getLogger(__name__).info(
        "Starting WADM on %s:%d (store: %s)", settings.host, settings.port,
        "mongodb" if settings.mongodb_uri else f"sqlite in {settings.data_dir}",
    )
    _warn_if_open(settings)
    # NOTE: one worker: the lifespan starts the collectors once per worker.
    return _serve(settings, 1, "wadm.__main__:make_asgi_app")


def _cmd_collect(args: argparse.Namespace) -> int:
    settings = _settings_or_exit()
    configure_logging(settings.log_level)
    if not settings.mongodb_uri:
        logging.getLogger(__name__).warning(
            "wadm collect without MONGODB_URI stores into SQLite in %s: only a `wadm serve` on this machine and "
            "folder can read it (scale-out wants MongoDB)", settings.data_dir)
    logging.getLogger(__name__).info("Collecting; health and metrics on %s:%d", settings.host, settings.port)
    _warn_if_open(settings)
    return _serve(settings, 1, "wadm.__main__:make_collect_app")


def _cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings_or_exit()
    configure_logging(settings.log_level)
    _warn_if_open(settings)
    return _serve(settings, args.workers, "wadm.__main__:make_api_app")


def _cmd_check_config(args: argparse.Namespace) -> int:
    settings = _settings_or_exit()
    sys.stdout.write(orjson.dumps(settings.as_dict(), option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


def _emulate(argv: list[str]) -> int:
    """``wadm emulate``: the emulator's own command line (imported only here)."""
    from wadm.emulator import cli

    parser = argparse.ArgumentParser(prog="wadm emulate", description=EMULATE_HELP)
    cli.add_arguments(parser)
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    return cli.run(args)


EMULATE_HELP = "run the local exchange emulator (tests, demos, benchmarks)"
MCP_HELP = "serve WADM's REST API as MCP tools for an LLM (needs the `mcp` extra)"


def _mcp(argv: list[str]) -> int:
    try:
        from wadm.mcp.server import main as mcp_main
    except ImportError as exc:
        print(f"wadm mcp needs the `mcp` extra ({exc.name} is missing): install with `uv sync --extra mcp`, "
              "or use the standalone wadm-mcp package (see README, Use it from Claude)", file=sys.stderr)
        return 2
    return mcp_main(argv)


def _workers(raw: str) -> int:
    if not (raw.isascii() and raw.isdigit() and 1 <= int(raw) <= 64):
        raise argparse.ArgumentTypeError(f"expected a number of worker processes from 1 to 64, got {raw!r}")
    return int(raw)


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(prog="wadm", description="Market-data collector for Binance and Bybit.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="collect and serve the API on WADM_HOST:WADM_PORT (one process)")
    run.set_defaults(func=_cmd_run)
    collect = sub.add_parser("collect", help="collect into the store, serving only /health and /metrics "
                                             "(scale-out: the API from `wadm serve` processes)")
    collect.set_defaults(func=_cmd_collect)
    serve = sub.add_parser("serve", help="serve the API from the store only, without collectors")
    serve.add_argument("--workers", type=_workers, default=1, help="API worker processes, 1-64 (default 1)")
    serve.set_defaults(func=_cmd_serve)
    check = sub.add_parser("check-config", help="validate the configuration and print the effective settings")
    check.set_defaults(func=_cmd_check_config)
    # Listed for --help; `wadm emulate ...` is parsed by the emulator itself (see main).
    sub.add_parser("emulate", help=EMULATE_HELP + "; see wadm emulate --help", add_help=False)
    sub.add_parser("mcp", help=MCP_HELP + "; see wadm mcp --help", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``wadm`` command."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["emulate"]:
        return _emulate(argv[1:])
    if argv[:1] == ["mcp"]:
        return _mcp(argv[1:])
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
