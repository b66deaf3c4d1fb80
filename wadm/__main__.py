"""The ``wadm`` command: run | serve | emulate | check-config.

This is the only module that configures logging.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

import orjson

from wadm.config import Settings, load_settings
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


def make_asgi_app() -> Any:
    """Granian's factory target: settings from the environment, a store, a service and the app."""
    from wadm.api.app import create_app
    from wadm.pipeline.service import Service
    from wadm.store import make_store

    settings = _settings_or_exit()
    configure_logging(settings.log_level)
    if os.environ.get("WADM_API_ONLY") == "1":
        import dataclasses

        settings = dataclasses.replace(settings, collectors_enabled=False)
    store = make_store(settings.mongodb_uri, settings.data_dir, settings.retention())
    service = Service(settings, store)
    return create_app(service)


def _serve(settings: Settings, workers: int) -> int:
    from granian.constants import Interfaces, Loops
    from granian.server import Server

    server = Server(
        "wadm.__main__:make_asgi_app",
        address=settings.host,
        port=settings.port,
        interface=Interfaces.ASGI,
        workers=workers,
        loop=Loops.uvloop,
        factory=True,
        log_access=False,
        workers_kill_timeout=60,
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
    # NOTE: one worker: the lifespan starts the collectors once per worker.
    return _serve(settings, 1)


def _cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings_or_exit()
    configure_logging(settings.log_level)
    os.environ["WADM_API_ONLY"] = "1"
    return _serve(settings, args.workers)


def _cmd_check_config(args: argparse.Namespace) -> int:
    settings = _settings_or_exit()
    sys.stdout.write(orjson.dumps(settings.as_dict(), option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


def _cmd_emulate(args: argparse.Namespace) -> int:
    from wadm.emulator import cli

    configure_logging(args.log_level)
    return cli.run(args)


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(prog="wadm", description="Market-data collector for Binance and Bybit.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="collect and serve the API on WADM_HOST:WADM_PORT (one process)")
    run.set_defaults(func=_cmd_run)
    serve = sub.add_parser("serve", help="serve the API from the store only, without collectors")
    serve.add_argument("--workers", type=int, default=1, help="API worker processes (default 1)")
    serve.set_defaults(func=_cmd_serve)
    check = sub.add_parser("check-config", help="validate the configuration and print the effective settings")
    check.set_defaults(func=_cmd_check_config)
    emulate = sub.add_parser("emulate", help="run the local exchange emulator (tests, demos, benchmarks)")
    from wadm.emulator import cli as emulator_cli

    emulator_cli.add_arguments(emulate)
    emulate.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    emulate.set_defaults(func=_cmd_emulate)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``wadm`` command."""
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
